"""The parts of the one-GPU smoke run (rqscale.bench.gpu_smoke): each takes the run's `Smoke` state and
returns a dict with "pass" and what it measured. Training parts run the real entry point,
`python -m rqscale.train` (private local Ray, 1 worker, NCCL, DeepSpeed), in a subprocess.

Stage-2 data are pre-extracted latents, not images. Encoding a 256x256 image with the ImageNet RQ-VAE's
encoder costs 134 GFLOP (rqscale.train.flops.stage1_flops, measured), 39% of the 480M RQ-Transformer's
345 GFLOP training step per image, and MFU counts the transformer's FLOPs only (rqscale/train/flops.py):
encoding in every step would show a GPU busy with uncounted convolutions. Pre-extracted latent shards are
also how stage 2 trains at scale (data_prep.latents; README "Data"). data_prep.latents encodes on CPU
Ray tasks, minutes for a thousand 256x256 images; here the same shard format is written after encoding
on the GPU, from a randomly initialised RQ-VAE (only shapes matter for speed and memory).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from rqscale.bench import gpu_checks as checks

HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LATENTS_PER_SHARD = 1024
ENCODE_BATCH = 64
UNIQUE_IMAGES = 128


def worker_cpus() -> int:
    """Every core for the one worker. Ray sets a worker's OMP_NUM_THREADS to its CPUs (1 by default), and at
    the end of a run the worker exports the checkpoint and samples its picture on the CPU: the 480M model's
    80 sampled images and their RQ-VAE decoding (~20 TFLOP) would take minutes on one thread."""
    return os.cpu_count() or 1


@dataclass
class Smoke:
    """What every part reads, and what earlier parts leave for later ones (`found`)."""

    out: str
    device: torch.device
    stage2_config: str
    stage1_config: str
    steps: int
    warmup: int  # steps left out of the steady state; also train.log_every (see gpu_checks.steady_state)
    micro: int
    stage1_steps: int
    stage1_batch: int
    batches: tuple
    peak: float
    planner_gpu: str
    deadline: float  # time.monotonic() by which everything must be done
    sdpa_batch: int = 8
    sample_repeats: int = 2
    found: dict = field(default_factory=dict)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def stage2_overrides(self) -> list:
        """The stage-2 run: 1 worker, ZeRO-3, bf16, activation checkpointing, micro x 1 x 1 = global batch."""
        return [f"run.output_dir={self.out}/runs", "run.name=stage2", f"stage2.rqvae_checkpoint={self.out}/rqvae-random.pt",
                "data.kind=webdataset", f"data.shards={self.out}/latents/manifest.json", "data.hflip=false",
                f"train.device={self.device.type}", "train.num_workers=1", f"train.micro_batch={self.micro}",
                "train.grad_accum=1", f"train.global_batch={self.micro}", f"train.max_steps={self.steps}",
                f"train.log_every={self.warmup}", f"train.peak_tflops={self.peak / 1e12:g}", "train.max_failures=0",
                f"train.cpus_per_worker={worker_cpus()}",
                "engine.precision=bf16", "engine.zero_stage=3", "stage2.model.activation_checkpointing=true",
                "checkpoint.every_steps=1000000"]

    def stage2_cfg(self):
        from rqscale.config import load

        return load(self.stage2_config, self.stage2_overrides(), check_files=False)


# ---- planner: the micro-batch and the predicted peak ------------------------------------------------

def plan_stage2(s: Smoke) -> dict:
    """The planner's report for the stage-2 run on one GPU (rqscale.plan's functions, in process)."""
    from rqscale.planning import GPUS, Cluster, plan

    return plan(s.stage2_cfg(), Cluster(1, 1, GPUS[s.planner_gpu]))


def fit_micro_batch(s: Smoke) -> dict:
    """Lower s.micro to the planner's largest fitting micro-batch if needed; the plan at the final micro."""
    report = plan_stage2(s)
    most = report["memory"]["max_micro_batch"]
    if 0 < most < s.micro:
        s.micro = most
        report = plan_stage2(s)
    return report


def _release(device: torch.device) -> None:
    """Hand this process's cached GPU memory back before a training subprocess needs the GPU."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- data: latent shards of a random RQ-VAE ---------------------------------------------------------

def source_images(resolution: int, unique: int, seed: int = 0) -> tuple:
    """(images in [-1, 1], labels, what they are): random crops of the photos that ship in scikit-image and
    scikit-learn, or uniform noise where those packages are missing (speed and memory do not depend on it)."""
    try:
        from rqscale.data.bundled import photo_crops

        images, labels = photo_crops(resolution, unique, seed)
        source = f"bundled photos (scikit-image, scikit-learn): {unique} random crops"
    except ImportError as exc:
        images = torch.rand(unique, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        labels = torch.arange(unique) % 8
        source = f"synthetic uniform noise ({exc.name} missing): fine for speed and memory, not for losses"
    return images, labels, source


@torch.no_grad()
def encode(rqvae, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    rqvae = rqvae.to(device).eval()
    parts = [rqvae.latents(images[i : i + ENCODE_BATCH].to(device)).cpu() for i in range(0, len(images), ENCODE_BATCH)]
    return torch.cat(parts)


def write_latent_shards(latents: torch.Tensor, labels: torch.Tensor, out: str, source: str) -> str:
    """data_prep.latents' format: tars of {key}.latent.bf16 + {key}.cls, a manifest with latent_shape."""
    from data_prep.shards import tar_bytes
    from rqscale.data.latents import LATENT_FIELD, latent_bytes

    os.makedirs(out, exist_ok=True)
    shards = []
    for index, start in enumerate(range(0, len(latents), LATENTS_PER_SHARD)):
        stop = min(start + LATENTS_PER_SHARD, len(latents))
        items = [{"__key__": f"smoke{i:06d}", LATENT_FIELD: latent_bytes(latents[i]), "cls": int(labels[i])} for i in range(start, stop)]
        data, offsets = tar_bytes(items)
        name = f"latents-{index:06d}.tar"
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        shards.append({"name": name, "samples": stop - start, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                       "offsets": offsets, "bad": 0})
    manifest = {"dataset": "latents", "latent_shape": list(latents.shape[1:]), "source": source, "samples": len(latents),
                "bad": 0, "shards": shards, "complete": True}
    path = os.path.join(out, "manifest.json")
    with open(path, "w") as f:
        json.dump(manifest, f)
    return path


def data_seconds_per_step(s: Smoke, steps: int = 3) -> float:
    """Host time the training loop spends reading one step's latents (RankBatches, 1 rank)."""
    from rqscale.data.pipeline import RankBatches

    batches = RankBatches(s.stage2_cfg(), 0, 1, 1)
    batches.next_step()  # first read: file cache and imports
    began = time.perf_counter()
    for _ in range(steps):
        batches.next_step()
    return (time.perf_counter() - began) / steps


def part_data(s: Smoke) -> dict:
    """Two global batches of latents (the reader drops short batches, so an epoch must hold one) and the
    random RQ-VAE whose encoder made them, saved where stage2.rqvae_checkpoint points."""
    from rqscale.models import RQVAE

    cfg = s.stage2_cfg()
    torch.manual_seed(0)
    rqvae = RQVAE(cfg.rqvae)
    torch.save(rqvae.state_dict(), os.path.join(s.out, "rqvae-random.pt"))
    count = 2 * s.micro
    images, labels, source = source_images(cfg.rqvae.resolution, min(count, UNIQUE_IMAGES))
    repeat = torch.arange(count) % len(images)  # a crop took ~50 ms to make on 2 cores: few are made, then reused
    latents = encode(rqvae, images, s.device)[repeat]
    labels = labels[repeat] % cfg.stage2.model.num_classes
    source += f", each used {count / len(images):g} times" if count > len(images) else ""
    write_latent_shards(latents, labels, os.path.join(s.out, "latents"), source)
    del rqvae
    _release(s.device)
    s.found["data_s_per_step"] = data_seconds_per_step(s)
    return {"pass": True, "source": source, "samples": count, "latent_shape": list(cfg.rqvae.code_shape[:2]) + [cfg.rqvae.code_dim],
            "host_read_s_per_step": s.found["data_s_per_step"]}


# ---- SDPA: which kernel attention runs on -----------------------------------------------------------

def _condition(m, batch: int, device: torch.device) -> Optional[torch.Tensor]:
    if m.condition == "class":
        return torch.randint(m.num_classes, (batch,), device=device)
    if m.condition == "text":
        return torch.randint(m.text_vocab, (batch, m.text_length), device=device)
    return None


def profiled_op_names(cfg, device: torch.device, batch: int) -> list:
    """Names of every op one bf16 forward + backward of the config's RQ-Transformer ran (training mode,
    its activation checkpointing and dropout as configured)."""
    from torch.profiler import ProfilerActivity, profile

    from rqscale.models import RQTransformer

    r, m = cfg.rqvae, cfg.stage2.model
    model = RQTransformer(m, tuple(r.code_shape), r.num_codes, r.code_dim).to(device, torch.bfloat16).train()
    codes = torch.randint(r.num_codes, (batch, *r.code_shape), device=device)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = model(codes, _condition(m, batch, device))
        out.logits.float().logsumexp(dim=-1).mean().backward()
    return [event.name for event in prof.events()]


def part_sdpa(s: Smoke) -> dict:
    names = profiled_op_names(s.stage2_cfg(), s.device, s.sdpa_batch)
    _release(s.device)
    verdict = checks.sdpa_verdict(checks.sdpa_backends(names), s.device.type)
    return {"pass": verdict["pass"], "backend": verdict["backend"], "calls": verdict["calls"], "reason": verdict["reason"]}


# ---- the training runs --------------------------------------------------------------------------------

def last_line(path: str) -> str:
    """The line that says why a run failed: its last 'rqscale:' line, else its last line."""
    with open(path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    said = [line for line in lines if line.startswith("rqscale:")]
    return (said or lines or ["(no output)"])[-1][-500:]


def run_train(config: str, overrides: list, log_path: str, timeout: float) -> dict:
    """`python -m rqscale.train CONFIG overrides...`, output to log_path; killed (its whole process group,
    Ray's processes with it) past `timeout` seconds."""
    began = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rqscale.train", config, *overrides], cwd=HERE, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    result = {"exit": code, "seconds": time.monotonic() - began, "log": log_path}
    if code != 0:
        result["error"] = f"timed out after {timeout:.0f} s" if code is None else last_line(log_path)
    return result


def measured_matmul_flops(device: torch.device) -> float:
    """bf16 FLOP/s of an 8192^3 product on random data (not zeros: METHOD.md), a ceiling below the datasheet's:
    788 TFLOP/s on the device tool's H200 (KINDS.md, 2026-10-28). A small product on CPU, for the tests."""
    from rqscale.bench.common import matmul_flops

    n = 8192 if device.type == "cuda" else 256
    flops = matmul_flops(n, n, n, torch.bfloat16, device)
    _release(device)
    return flops


def _records(run_dir: str) -> list:
    path = os.path.join(run_dir, "metrics.jsonl")
    return checks.read_metrics(path) if os.path.isfile(path) else []


def part_stage2(s: Smoke) -> dict:
    """~50 steps of the 480M RQ-Transformer; steady images/s and MFU against the GPU's bf16 peak."""
    matmul = measured_matmul_flops(s.device)  # before the run: the GPU is idle now
    run = run_train(s.stage2_config, s.stage2_overrides(), os.path.join(s.out, "stage2.log"), s.remaining() - 60)
    records = _records(os.path.join(s.out, "runs", "stage2"))
    result = {**run, "steps_recorded": len(records), "micro_batch": s.micro, "global_batch": s.micro}
    if run["exit"] != 0 or len(records) < s.steps:
        return {"pass": False, **result, "error": run.get("error") or f"{len(records)} of {s.steps} steps recorded"}
    s.found["peak_bytes"] = checks.peak_memory_bytes(records)
    s.found["checkpoint"] = os.path.join(s.out, "runs", "stage2", "rqtransformer.pt")
    return {"pass": checks.finite_losses(records), **result, **stage2_speed(s, records, matmul),
            "loss_first": records[0]["loss"], "loss_last": records[-1]["loss"], "peak_mem_gib": s.found["peak_bytes"] / checks.GIB}


def stage2_speed(s: Smoke, records: list, matmul: float) -> dict:
    """Steady images/s, MFU against the datasheet peak (the goal) and against the measured matmul rate, and
    the share of a step the host spends reading latents (measured in the data part)."""
    from rqscale.train.flops import stage2_flops

    steady = checks.steady_state(records, s.micro, s.warmup)
    flops = stage2_flops(s.stage2_cfg())["train"]
    rate = steady["images_per_s"]
    value = checks.mfu(flops, rate, s.peak)
    return {"steady": steady, "images_per_s": rate, "train_flops_per_image": flops, "mfu": value,
            "goal_mfu": checks.MFU_GOAL, "goal_met": value >= checks.MFU_GOAL, "matmul_tflops_measured": matmul / 1e12,
            "mfu_vs_measured_matmul": checks.mfu(flops, rate, matmul),
            "host_data_share_of_step": s.found.get("data_s_per_step", 0.0) * rate / s.micro}


def part_stage1(s: Smoke) -> dict:
    """A few steps of the stage-1 RQ-VAE (GAN and random-backbone LPIPS on) through the same entry point."""
    b = s.stage1_batch
    overrides = [f"run.output_dir={s.out}/runs", "run.name=stage1", f"train.device={s.device.type}", "train.num_workers=1",
                 f"train.global_batch={b}", f"train.micro_batch={b}", f"train.max_steps={s.stage1_steps}", "train.log_every=1",
                 "data.kind=bundled", "data.bundled_set=photos", "data.num_samples=64", "stage1.loss.lpips_random_backbone=true",
                 "stage1.loss.disc_start=0", f"train.peak_tflops={s.peak / 1e12:g}", "checkpoint.every_steps=1000000",
                 "train.max_failures=0", f"train.cpus_per_worker={worker_cpus()}"]
    run = run_train(s.stage1_config, overrides, os.path.join(s.out, "stage1.log"), s.remaining() - 5)
    records = _records(os.path.join(s.out, "runs", "stage1"))
    ok = run["exit"] == 0 and len(records) >= s.stage1_steps and checks.finite_losses(records)
    result = {"pass": ok, **run, "steps_recorded": len(records), "batch": b}
    if records:
        result.update(loss_first=records[0].get("loss"), loss_last=records[-1].get("loss"),
                      peak_mem_gib=checks.peak_memory_bytes(records) / checks.GIB)
    if not ok and "error" not in result:
        result["error"] = f"{len(records)} of {s.stage1_steps} steps recorded, losses finite: {checks.finite_losses(records)}"
    return result


# ---- planner against measurement, sampling --------------------------------------------------------------

def part_planner(s: Smoke) -> dict:
    """Planned peak (model states + micro x activations per sample) against the stage-2 run's measured peak.

    Measured: torch.cuda.max_memory_allocated of the worker: every tensor PyTorch allocated, including the
    frozen RQ-VAE, the soft-label scratch and the optimizer's temporaries; not the CUDA context, NCCL's own
    buffers, or the allocator's cached-but-free blocks. Planned: DeepSpeed's ZeRO-3 model-state estimate +
    the activation model (rqscale/planning/activations.py); the 10% reserve is not part of the peak."""
    if "peak_bytes" not in s.found:
        return {"pass": False, "error": "no measured peak: stage2_train did not finish"}
    report = s.found["plan"]
    memory = report["memory"]
    compared = checks.memory_comparison(s.found["peak_bytes"], memory["peak_bytes"])
    return {"pass": True, **compared, "goal_met": compared["within_tolerance"], "planner_gpu": s.planner_gpu,
            "micro_batch": memory["micro_batch"], "model_states_gib": memory["model_states_gpu_bytes"] / checks.GIB,
            "activations_gib_per_sample": memory["activations_bytes_per_sample"] / checks.GIB,
            "max_micro_batch": memory["max_micro_batch"]}


def sampling_model(s: Smoke) -> tuple:
    """(model, what its weights are): the trained checkpoint if stage 2 wrote one, else random weights."""
    path = s.found.get("checkpoint")
    if path and os.path.isfile(path):
        from rqscale.sampling.checkpoint import load_consolidated

        return load_consolidated(path, device=str(s.device))[2], "stage2_train's rqtransformer.pt"
    from rqscale.bench.sample import build

    cfg = s.stage2_cfg()
    return build(cfg, tuple(cfg.rqvae.code_shape), torch.float32, s.device), "random (no stage-2 checkpoint)"


def part_sampling(s: Smoke) -> dict:
    """Seconds per image at each batch (paper Fig. 4: codes only, KV cache, bf16; 1.4B on one A100 took
    0.02 s/image at batch 500)."""
    from rqscale.eval.speed import sampling_speed

    model, weights = sampling_model(s)
    rows = sampling_speed(model, list(s.batches), s.device, torch.bfloat16, repeats=s.sample_repeats)
    del model
    _release(s.device)
    per_image = {str(r["batch"]): r["seconds_per_image"] for r in rows}
    ok = len(rows) == len(s.batches) and all(v > 0 for v in per_image.values())
    return {"pass": ok, "weights": weights, "s_per_image": per_image, "images_per_s": {str(r["batch"]): r["images_per_second"] for r in rows}}
