"""`python -m rqscale.bench.gpu_smoke [options]`: the one-GPU proof, driven by scripts/gpu_smoke.sh.

On one CUDA GPU, in this order (each part's outcome is kept; a failed part does not stop the others):
  sdpa            one bf16 forward + backward of the stage-2 model under torch.profiler: which fused
                  attention kernel SDPA ran (flash / memory-efficient / cudnn pass; math fails)
  data            latent shards from a random ImageNet RQ-VAE (rqscale/bench/gpu_parts.py says why latents)
  stage2_train    `python -m rqscale.train configs/rq_imagenet_480m.yaml` (480M parameters, n_e 1536):
                  private local Ray, 1 GPU worker, NCCL, ZeRO-3, bf16, activation checkpointing, ~50 steps
  planner_memory  the planner's peak for the same config and micro-batch against the measured peak
  sampling        s/image at batch 100, 200, 500 from the trained checkpoint (paper Fig. 4)
  stage1          a few steps of the ImageNet RQ-VAE (GAN + LPIPS) through the same entry point
Prints ONE JSON line on stdout (everything else goes to stderr and to log files under --out); exit
status 0 only if every part passed. Goals (MFU >= 0.45, planner within 15%) are reported as goal_met
flags; --require-goals makes an unmet goal fail the run too. A CPU-only machine is refused at once;
--allow-cpu-for-tests runs the parts on the CPU for the unit tests and never passes.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from typing import Callable

REQUIRED = (("torch", "torch"), ("numpy", "numpy"), ("PIL", "pillow"), ("yaml", "pyyaml"), ("omegaconf", "omegaconf"),
            ("fsspec", "fsspec"), ("deepspeed", "deepspeed"), ("ray", "ray"), ("ray.train.torch", "ray[train]"),
            ("ray.dashboard.optional_deps", "ray[default]"), ("pyarrow.fs", "pyarrow"), ("torchvision", "torchvision"),
            ("lpips", "lpips"), ("scipy", "scipy"), ("torch.utils.tensorboard", "tensorboard"))
OPTIONAL = (("skimage.data", "scikit-image"), ("sklearn.datasets", "scikit-learn"))  # else noise images
# Distributions whose requirements are checked against what is installed (ray with the extras rqscale uses).
CARRIED = (("deepspeed", ()), ("ray", ("default", "train")), ("omegaconf", ()), ("lpips", ()), ("pydantic", ()))
NOT_NEEDED = {"py-spy", "virtualenv"}  # Ray runs them only to profile and for pip runtime_envs (scripts/gpu_wheels.py)
PARTS = ("sdpa", "data", "stage2_train", "planner_memory", "sampling", "stage1")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGE2_CONFIG = os.path.join(REPO, "configs", "rq_imagenet_480m.yaml")  # Table A.1's 480M model: width 1536, 12 + 4 layers
STAGE1_CONFIG = os.path.join(REPO, "configs", "stage1", "imagenet.yaml")


def missing_packages(modules=REQUIRED) -> list:
    """'distribution (missing module, or why it failed)' for every module that does not import."""
    missing = []
    for module, dist in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            missing.append(f"{dist} ({exc.name or exc})")
        except Exception as exc:  # e.g. a protobuf runtime older than the generated code: still unusable
            missing.append(f"{dist} ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})")
    return missing


def version_conflicts(dists=CARRIED) -> list:
    """'dist needs req, found version' for each requirement of `dists` that the installed versions miss.
    Warnings only: a carried wheel next to an older preinstalled package may still work."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    found = []
    for dist, extras in dists:
        try:
            requires = md.requires(dist) or []
        except md.PackageNotFoundError:
            continue  # missing_packages reports it
        for req in map(Requirement, requires):
            if req.name in NOT_NEEDED or (req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras or ("",))):
                continue
            try:
                have = md.version(req.name)
            except md.PackageNotFoundError:
                found.append(f"{dist} needs {req.name}, not installed")
                continue
            if not req.specifier.contains(have, prereleases=True):
                found.append(f"{dist} needs {req.name}{req.specifier}, found {have}")
    return found


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rqscale.bench.gpu_smoke", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/rqscale-gpu-smoke", help="work folder: each run makes a fresh run-<time>/ in it")
    p.add_argument("--deadline-s", type=float, default=450.0, help="stop starting work after this many seconds")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--stage2-config", default=STAGE2_CONFIG)
    p.add_argument("--stage1-config", default=STAGE1_CONFIG)
    p.add_argument("--steps", type=int, default=50, help="stage-2 steps (default 50)")
    p.add_argument("--warmup-steps", type=int, default=10, help="steps left out of images/s; also train.log_every")
    p.add_argument("--micro-batch", type=int, default=512, help="stage-2 micro-batch = global batch (lowered to the planner's largest fitting)")
    p.add_argument("--stage1-steps", type=int, default=5)
    p.add_argument("--stage1-batch", type=int, default=8)
    p.add_argument("--sample-batches", type=int, nargs="+", default=[100, 200, 500])
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak per GPU, for a GPU not in rqscale/bench/gpu_checks.py")
    p.add_argument("--planner-gpu", default=None, help="planner GPU key (rqscale/planning/hardware.py); default from the device name")
    p.add_argument("--require-goals", action="store_true", help="fail (exit 1) when a goal is not met, not just report it")
    p.add_argument("--check-deps", action="store_true", help="only list missing Python packages (exit 3 if any)")
    p.add_argument("--allow-cpu-for-tests", action="store_true", help="tests only: run on CPU; the result never passes")
    return p


def _device(allow_cpu: bool):
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", 0), torch.cuda.get_device_name(0)
    if allow_cpu:
        return torch.device("cpu"), "cpu"
    return None, None


def _smoke(args, device, name: str, started: float):
    from rqscale.bench import gpu_checks as checks
    from rqscale.bench.gpu_parts import Smoke

    try:
        peak, source = checks.peak_flops(name, args.peak_tflops)
    except checks.UnknownGPUError as exc:
        raise SystemExit(f"gpu_smoke: {exc}") from None
    gpu = args.planner_gpu or checks.planner_gpu(name)
    if gpu is None:
        raise SystemExit(f"gpu_smoke: the planner knows no GPU named '{name}': pass --planner-gpu KEY (rqscale/planning/hardware.py)")
    out = os.path.join(os.path.abspath(args.out), time.strftime("run-%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    s = Smoke(out=out, device=device, stage2_config=args.stage2_config, stage1_config=args.stage1_config, steps=args.steps,
              warmup=args.warmup_steps, micro=args.micro_batch, stage1_steps=args.stage1_steps, stage1_batch=args.stage1_batch,
              batches=tuple(args.sample_batches), peak=peak, planner_gpu=gpu, deadline=started + args.deadline_s)
    s.found["peak_source"] = source
    return s


def _part_functions() -> dict:
    from rqscale.bench import gpu_parts as p

    return {"sdpa": p.part_sdpa, "data": p.part_data, "stage2_train": p.part_stage2, "planner_memory": p.part_planner,
            "sampling": p.part_sampling, "stage1": p.part_stage1}


def run_part(name: str, fn: Callable, s) -> dict:
    """One part, timed; an exception becomes a failed part with a one-line error, never a crash."""
    if s.remaining() < 10:
        return {"pass": False, "error": "skipped: out of time (--deadline-s)"}
    print(f"gpu_smoke: {name} ...", file=sys.stderr, flush=True)
    began = time.monotonic()
    try:
        result = fn(s)
    except Exception as exc:  # reported in the JSON, and the other parts still run
        result = {"pass": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]}
    result["wall_s"] = round(time.monotonic() - began, 1)
    print(f"gpu_smoke: {name} {'passed' if result['pass'] else 'FAILED'} in {result['wall_s']} s", file=sys.stderr, flush=True)
    return result


def run_parts(s, wanted: list) -> dict:
    """Every wanted part in PARTS order. The planner's report (micro-batch fit, predicted peak) comes first."""
    from rqscale.bench.gpu_parts import fit_micro_batch

    functions = _part_functions()
    results = {}
    try:
        s.found["plan"] = fit_micro_batch(s)
    except Exception as exc:  # the training parts still run at the requested micro-batch
        results["planner_memory"] = {"pass": False, "error": f"planner: {type(exc).__name__}: {exc}"[:500]}
        wanted = [w for w in wanted if w != "planner_memory"]
    for name in PARTS:
        if name in wanted:
            results[name] = run_part(name, functions[name], s)
    return results


def summary(parts: dict, s, name: str, started: float, cpu: bool, require_goals: bool) -> dict:
    """The one JSON object: device, headline numbers, every part, goals, pass."""
    import torch

    train, memory = parts.get("stage2_train", {}), parts.get("planner_memory", {})
    goals = {"mfu_ge_0.45": train.get("goal_met"), "planner_memory_within_15pct": memory.get("goal_met")}
    failed = [k for k, v in parts.items() if not v["pass"]]
    goals_met = all(v is True for v in goals.values())
    ok = not failed and not cpu and (goals_met or not require_goals)
    reason = "cpu" if cpu else (f"failed parts: {', '.join(failed)}" if failed else (None if ok else "goals not met"))
    return {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "peak_tflops": s.peak / 1e12, "peak_source": s.found.get("peak_source"), "planner_gpu": s.planner_gpu,
            "images_per_s": train.get("images_per_s"), "mfu": train.get("mfu"), "peak_mem_gib": memory.get("measured_gib"),
            "planner_peak_gib": memory.get("planner_gib"), "sdpa_backend": parts.get("sdpa", {}).get("backend"),
            "s_per_image": parts.get("sampling", {}).get("s_per_image"), "data_source": parts.get("data", {}).get("source"),
            "goals": goals, "goal_met": goals_met, "parts": parts, "pass": ok, "reason": reason,
            "version_warnings": version_conflicts(),
            "out": s.out, "wall_s": round(time.monotonic() - started, 1)}


def _claim_stdout() -> int:
    """Keep the real stdout for the JSON line and send fd 1 to stderr: DeepSpeed's and Ray's loggers
    (and any C library) print to stdout, which must hold one line only."""
    saved = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return saved


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    stdout = _claim_stdout()
    if args.check_deps:
        missing, conflicts = missing_packages(), version_conflicts()
        if conflicts:
            print(f"gpu_smoke: version warnings (may be harmless): {'; '.join(conflicts)}", file=sys.stderr)
        os.write(stdout, ((", ".join(missing) if missing else "ok") + "\n").encode())
        return 3 if missing else 0
    started = time.monotonic()
    device, name = _device(args.allow_cpu_for_tests)
    if device is None:
        print("gpu_smoke: no CUDA GPU (torch.cuda.is_available() is False): run this on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    s = _smoke(args, device, name, started)
    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(wanted) - set(PARTS))
    if unknown:
        raise SystemExit(f"gpu_smoke: unknown parts {unknown}: choose from {','.join(PARTS)}")
    result = summary(run_parts(s, wanted), s, name, started, device.type == "cpu", args.require_goals)
    os.write(stdout, (json.dumps(result) + "\n").encode())
    with open(os.path.join(s.out, "gpu_smoke.json"), "w") as f:
        json.dump(result, f, indent=1)
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
