"""Recovery time: a Ray Train worker is SIGKILLed mid-run; how long until the first step after resume?

Runs `python -m rqscale.bench.faults --kill-at STEP:1` (the training CLI, 2 CPU workers, ZeRO-3, debug
stage-2 config, with a step hook that SIGKILLs rank 1 at STEP), then reads the kill time (faults.jsonl)
and the end time of the first step trained after the restart (metrics.jsonl `wall_time`). What is
measured: Ray noticing the dead worker, tearing down and restarting the group, DeepSpeed initialisation,
checkpoint download and load, and one training step.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile


def run(config: str, rqvae: str | None = None, kill_step: int = 4, every: int = 2, steps: int = 6) -> dict:
    """Only timing matters, so without `rqvae` a randomly initialised RQ-VAE of the config is used."""
    with tempfile.TemporaryDirectory(prefix="rqscale-bench-recovery-") as out:
        rqvae = rqvae or _random_rqvae(config, out)
        cmd = [sys.executable, "-m", "rqscale.bench.faults", "--kill-at", f"{kill_step}:1",
               config, f"run.output_dir={out}", "run.name=recovery", f"stage2.rqvae_checkpoint={rqvae}",
               "train.num_workers=2", f"train.micro_batch={_half_batch(config)}", f"train.max_steps={steps}",
               f"checkpoint.every_steps={every}", "train.max_failures=2"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"training run failed:\n{done.stderr[-3000:]}")
        run_dir = os.path.join(out, "recovery")
        kill = json.loads(open(os.path.join(run_dir, "faults.jsonl")).readline())
        rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    resumed_from = (kill_step // every) * every
    first_after = next(r for r in rows if r["step"] == resumed_from and r["wall_time"] > kill["time"])
    return {"kill_step": kill_step, "resumed_from_step": resumed_from, "recovery_s": first_after["wall_time"] - kill["time"]}


def _half_batch(config: str) -> int:
    from rqscale.config import load

    return load(config, check_files=False).train.global_batch // 2


def _random_rqvae(config: str, out: str) -> str:
    import torch

    from rqscale.config import load
    from rqscale.models import RQVAE

    path = os.path.join(out, "random-rqvae.pt")
    torch.save(RQVAE(load(config, check_files=False).rqvae).state_dict(), path)
    return path
