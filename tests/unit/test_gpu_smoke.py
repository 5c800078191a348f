"""The one-GPU smoke run (scripts/gpu_smoke.sh, rqscale.bench.gpu_smoke) on a machine without a GPU.

- the script refuses at once, with one line, before installing or writing anything;
- the driver's arithmetic: steady-state images/s from metrics.jsonl (per-step and windowed records),
  MFU, planned vs measured memory in GiB, the GPU name -> bf16 peak table (H200 added to the planner);
- SDPA backend detection on a real profile of the debug stage-2 model: the fused CPU kernel passes,
  forcing the math backend fails;
- the offline install helper's dependency walk (markers for the GPU machine's Python 3.12);
- the driver end to end on CPU (data, `python -m rqscale.train` on Ray, planner), which never passes.
"""
import importlib.util
import json
import math
import os
import stat
import subprocess
import sys
import time

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from rqscale.bench import gpu_checks as checks
from rqscale.bench import gpu_parts, gpu_smoke
from rqscale.config import load
from rqscale.planning import GPUS
from rqscale.planning.hardware import GIB
from tests.conftest import DEBUG_STAGE2, REPO

SCRIPT = os.path.join(REPO, "scripts", "gpu_smoke.sh")
CPU = torch.device("cpu")


# ---- the script on a CPU-only machine ------------------------------------------------------------------

def _fake_nvidia_smi(folder, lists_gpu: bool) -> str:
    """A stub nvidia-smi first on PATH: prints one GPU, or fails as it does without a driver or device."""
    path = folder / "nvidia-smi"
    body = 'echo "GPU 0: NVIDIA H200 (UUID: GPU-0)"' if lists_gpu else 'echo "NVIDIA-SMI has failed" >&2; exit 9'
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def _run_script(tmp_path, path_env: str, *extra: str):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "marker.whl").write_bytes(b"not a wheel")
    env = {**os.environ, "PATH": path_env, "RQSCALE_PYTHON": sys.executable}
    began = time.monotonic()
    done = subprocess.run(["bash", SCRIPT, "--wheels", str(wheels), "--out", str(tmp_path / "out"), *extra], capture_output=True,
                          text=True, env=env, timeout=60)
    return done, time.monotonic() - began


def test_script_refuses_a_machine_without_gpu_at_once(tmp_path):
    done, seconds = _run_script(tmp_path, _fake_nvidia_smi(tmp_path, lists_gpu=False))
    assert done.returncode == 2
    assert seconds < 5
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU found" in lines[0]
    assert not (tmp_path / "out").exists()  # nothing installed, nothing written


def test_the_official_comparison_mode_refuses_a_machine_without_gpu_at_once(tmp_path):
    done, seconds = _run_script(tmp_path, _fake_nvidia_smi(tmp_path, lists_gpu=False), "--vs-official", str(tmp_path))
    assert done.returncode == 2 and seconds < 5 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "no CUDA GPU found" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a PyTorch that sees no GPU")
def test_script_refuses_when_torch_sees_no_gpu(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    done, seconds = _run_script(tmp_path, _fake_nvidia_smi(bin_dir, lists_gpu=True))
    assert done.returncode == 2
    assert seconds < 30  # one `import torch`
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU visible to PyTorch" in lines[0]
    assert not (tmp_path / "out").exists()


def test_driver_refuses_cpu_without_the_test_flag(tmp_path):
    done = subprocess.run([sys.executable, "-m", "rqscale.bench.gpu_smoke", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1].startswith("gpu_smoke: no CUDA GPU")


# ---- arithmetic ---------------------------------------------------------------------------------------

def _record(step: int, images_per_s: float, mem_gb: float = 1.0, loss: float = 2.0) -> dict:
    return {"step": step, "images_per_s": images_per_s, "mem_gb": mem_gb, "loss": loss}


def test_steady_state_leaves_out_warmup_and_weights_by_time():
    # 512 images a step: a 10 s first step, then steps of 0.5 s and 1.0 s.
    records = [_record(0, 51.2), _record(1, 1024.0), _record(2, 512.0), _record(3, 1024.0)]
    steady = checks.steady_state(records, 512, warmup_steps=1)
    assert steady["steps"] == 3
    assert steady["seconds"] == pytest.approx(2.0)
    assert steady["images_per_s"] == pytest.approx(3 * 512 / 2.0)  # total images / total time, not the mean rate
    assert steady["first_step_s"] == pytest.approx(10.0)


def test_steady_state_of_windowed_records():
    """Steps read back together share their window's mean time: whole windows give the window's rate."""
    records = [_record(0, 10.0)] + [_record(s, 800.0) for s in range(1, 10)] + [_record(s, 1000.0) for s in range(10, 20)]
    assert checks.steady_state(records, 100, warmup_steps=10)["images_per_s"] == pytest.approx(1000.0)
    assert checks.steady_state(records, 100, warmup_steps=1)["images_per_s"] == pytest.approx(19 * 100 / (9 * 0.125 + 10 * 0.1))
    with pytest.raises(ValueError, match="run more steps"):
        checks.steady_state(records, 100, warmup_steps=20)


def test_mfu_of_the_480m_model_on_an_h200():
    cfg = load(os.path.join(REPO, "configs", "rq_imagenet_480m.yaml"), check_files=False)
    from rqscale.train.flops import stage2_flops

    flops = stage2_flops(cfg)["train"]
    assert flops == pytest.approx(344.6e9, rel=1e-3)  # `python -m rqscale.plan configs/rq_imagenet_480m.yaml`
    peak, _ = checks.peak_flops("NVIDIA H200")
    assert checks.mfu(flops, 1291.5, peak) == pytest.approx(0.45, abs=1e-3)  # the goal needs ~1,290 images/s
    assert checks.mfu(1e12, 100.0, 200e12) == pytest.approx(0.5)


def test_memory_comparison_in_gib_from_gb_records():
    records = [_record(0, 1.0, mem_gb=30.0), _record(1, 1.0, mem_gb=40.0), _record(2, 1.0, mem_gb=39.0)]
    measured = checks.peak_memory_bytes(records)
    assert measured == pytest.approx(40e9)  # mem_gb is max_memory_allocated / 1e9: decimal gigabytes
    near = checks.memory_comparison(measured, 34 * GIB)
    assert near["measured_gib"] == pytest.approx(40e9 / 2**30)  # 37.25 GiB, not 40
    assert near["planner_over_measured"] == pytest.approx(34 * GIB / 40e9)
    assert near["within_tolerance"]  # 36.5 GB planned vs 40 GB measured: -8.7%
    far = checks.memory_comparison(measured, 30 * GIB)
    assert far["relative_error"] == pytest.approx(30 * GIB / 40e9 - 1) and not far["within_tolerance"]


@pytest.mark.parametrize("name, key", [("NVIDIA H200", "h200-141gb"), ("NVIDIA H100 80GB HBM3", "h100-80gb"),
                                       ("NVIDIA A100-SXM4-80GB", "a100-80gb"), ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
                                       ("NVIDIA A100-PCIE-40GB", "a100-40gb"), ("NVIDIA H100 PCIe", None),
                                       ("NVIDIA H200 NVL", None), ("cpu", None)])
def test_gpu_name_to_planner_gpu(name, key):
    assert checks.planner_gpu(name) == key


def test_peak_table_h200_and_overrides():
    assert GPUS["h200-141gb"].peak_flops == GPUS["h100-80gb"].peak_flops == 989e12  # same Hopper tensor cores
    assert GPUS["h200-141gb"].memory_bytes == 141 * GIB
    assert checks.peak_flops("NVIDIA H200")[0] == 989e12
    assert checks.peak_flops("NVIDIA H100 PCIe", override_tflops=756.0) == (756e12, "--peak-tflops")
    with pytest.raises(checks.UnknownGPUError, match="pass --peak-tflops"):
        checks.peak_flops("NVIDIA H100 PCIe")


def test_planner_cli_takes_the_h200(capsys):
    from rqscale.plan import main

    assert main([DEBUG_STAGE2, "stage2.rqvae_checkpoint=null", "--nodes", "1", "--gpus-per-node", "1",
                 "--gpu", "h200-141gb", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["cluster"]["gpu"] == "h200-141gb" and report["cluster"]["peak_tflops"] == 989.0


# ---- SDPA backend detection ------------------------------------------------------------------------------

def _debug_cfg():
    return load(DEBUG_STAGE2, ["stage2.model.activation_checkpointing=true"], check_files=False)


@pytest.fixture
def sdpa_on_cpu(monkeypatch):
    """The model's attention through scaled_dot_product_attention on CPU too, as on GPU (rqscale trains
    on CPU with its own math path, which the detector is not for)."""
    from rqscale.models import transformer

    monkeypatch.setattr(transformer, "CPU_ATTENTION", "sdpa")


def test_sdpa_detector_sees_the_fused_cpu_kernel(sdpa_on_cpu):
    names = gpu_parts.profiled_op_names(_debug_cfg(), CPU, batch=2)
    verdict = checks.sdpa_verdict(checks.sdpa_backends(names), "cpu")
    assert verdict["pass"] and verdict["backend"] == "flash-cpu"
    assert verdict["calls"]["flash-cpu"] == 2 * (4 + 2)  # every block's forward, again in the checkpointed recompute


def test_sdpa_check_fails_on_the_math_backend(sdpa_on_cpu):
    with sdpa_kernel(SDPBackend.MATH):
        names = gpu_parts.profiled_op_names(_debug_cfg(), CPU, batch=2)
    verdict = checks.sdpa_verdict(checks.sdpa_backends(names), "cpu")
    assert not verdict["pass"] and verdict["backend"] == "math" and "math path" in verdict["reason"]


@pytest.mark.parametrize("counts, ok, backend", [({"flash": 36}, True, "flash"), ({"memory-efficient": 36}, True, "memory-efficient"),
                                                 ({"cudnn": 36}, True, "cudnn"), ({"flash": 35, "math": 1}, False, "math"),
                                                 ({"flash-cpu": 36}, False, "flash-cpu"), ({}, False, None)])
def test_sdpa_verdict_on_cuda(counts, ok, backend):
    verdict = checks.sdpa_verdict(counts, "cuda")
    assert verdict["pass"] is ok and verdict["backend"] == backend


# ---- the driver's plumbing -----------------------------------------------------------------------------

def _smoke(tmp_path, **kw) -> gpu_parts.Smoke:
    settings = dict(out=str(tmp_path), device=CPU, stage2_config=DEBUG_STAGE2, stage1_config="", steps=4, warmup=2,
                    micro=16, stage1_steps=2, stage1_batch=8, batches=(2,), peak=1e12, planner_gpu="a100-40gb",
                    deadline=time.monotonic() + 600)
    return gpu_parts.Smoke(**{**settings, **kw})


def test_micro_batch_is_lowered_to_what_the_planner_fits(tmp_path):
    s = _smoke(tmp_path, micro=10**7)
    report = gpu_parts.fit_micro_batch(s)
    assert s.micro == report["memory"]["max_micro_batch"] == report["memory"]["micro_batch"]
    assert report["memory"]["fits"]


def test_latent_shards_feed_the_training_reader(tmp_path):
    from rqscale.data.pipeline import RankBatches

    s = _smoke(tmp_path)
    result = gpu_parts.part_data(s)
    assert result["pass"] and result["samples"] == 2 * s.micro and result["latent_shape"] == [8, 8, 64]
    assert os.path.isfile(tmp_path / "rqvae-random.pt")
    (batch,) = RankBatches(s.stage2_cfg(), 0, 1, 1).next_step()
    assert batch["latents"].shape == (16, 8, 8, 64) and batch["latents"].dtype == torch.float32
    assert 0 <= int(batch["cond"].min()) and int(batch["cond"].max()) < 10


def test_a_failing_part_becomes_one_line_not_a_crash(tmp_path):
    def broken(_):
        raise RuntimeError("first line\nsecond line")

    result = gpu_smoke.run_part("x", broken, _smoke(tmp_path))
    assert result == {"pass": False, "error": "RuntimeError: first line", "wall_s": result["wall_s"]}
    late = gpu_smoke.run_part("x", broken, _smoke(tmp_path, deadline=time.monotonic()))
    assert late["error"].startswith("skipped: out of time")


def test_package_checks():
    assert gpu_smoke.missing_packages((("json", "json"), ("no_such_module_rq", "nosuch"))) == ["nosuch (no_such_module_rq)"]
    assert gpu_smoke.version_conflicts((("pytest", ()),)) == []


def test_version_conflicts_name_the_requirement(monkeypatch):
    import importlib.metadata as md

    monkeypatch.setattr(md, "requires", lambda dist: ["numpy>=999", "nosuchdist-rq", "torch; extra == 'never'"])
    found = gpu_smoke.version_conflicts((("fake", ()),))
    assert found == [f"fake needs numpy>=999, found {md.version('numpy')}", "fake needs nosuchdist-rq, not installed"]


def _wheels_module():
    spec = importlib.util.spec_from_file_location("gpu_wheels", os.path.join(REPO, "scripts", "gpu_wheels.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_offline_wheel_list_skips_what_the_gpu_machine_has():
    from packaging.requirements import Requirement

    w = _wheels_module()
    present = w.read_present(os.path.join(REPO, "scripts", "gpu_machine_packages.txt"))
    assert {"torch", "numpy", "aiohttp", "grpcio", "scikit-image"} <= present and "ray" not in present
    need = w.closure(present, w.target_env("3.12"), roots=(("omegaconf", ()), ("lpips", ())))
    assert {"omegaconf", "lpips", "protobuf"} <= set(need) and not (set(need) & present - set(w.FORCED))
    spy = Requirement('py-spy>=0.4.0; python_version >= "3.12" and extra == "default"')
    assert w.applies(spy, ("default",), w.target_env("3.12")) and not w.applies(spy, ("default",), w.target_env("3.11"))
    assert not w.applies(spy, (), w.target_env("3.12"))


# ---- end to end on CPU ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_driver_runs_stage2_through_ray_on_cpu_and_never_passes(tmp_path):
    """~1.5 min: latent shards, `python -m rqscale.train` (Ray, 1 CPU worker, ZeRO-3) for 4 steps, planner."""
    cmd = [sys.executable, "-m", "rqscale.bench.gpu_smoke", "--allow-cpu-for-tests", "--out", str(tmp_path),
           "--parts", "data,stage2_train,planner_memory", "--stage2-config", DEBUG_STAGE2, "--micro-batch", "16",
           "--steps", "4", "--warmup-steps", "2", "--peak-tflops", "1", "--planner-gpu", "h100-80gb"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout + done.stderr[-3000:]  # one JSON line: everything else went to stderr
    result = json.loads(lines[0])
    assert done.returncode == 1 and result["pass"] is False and result["reason"] == "cpu"
    train = result["parts"]["stage2_train"]
    assert train["pass"] and train["exit"] == 0 and train["steps_recorded"] == 4, train
    assert train["steady"]["steps"] == 2 and result["images_per_s"] > 0 and math.isfinite(result["mfu"])
    assert result["parts"]["planner_memory"]["pass"] and result["planner_peak_gib"] > 0
    assert os.path.isfile(os.path.join(result["out"], "runs", "stage2", "rqtransformer.pt"))
