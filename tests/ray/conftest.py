"""Runs of `python -m rqscale.train` through the real Ray Train + DeepSpeed path, shared by the tests.

Every run is the CLI in a subprocess with its own private local Ray (2 CPU workers, gloo), on the
debug class-conditional RQ-Transformer trained on the digits' codes of the session's debug RQ-VAE.
"""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import DEBUG_STAGE2, REPO, UNCONDITIONAL

STEPS, EVERY = 6, 2


def train_cli(*overrides, kill_at=None, env=None, timeout=600):
    """`python -m rqscale.train CONFIG overrides...` -> CompletedProcess (stdout + stderr merged).
    kill_at="STEP:RANK" runs it through rqscale.bench.faults, whose step hook SIGKILLs that rank there."""
    full_env = {**os.environ, **(env or {})}
    module = ["rqscale.bench.faults", "--kill-at", kill_at] if kill_at else ["rqscale.train"]
    return subprocess.run([sys.executable, "-m", *module, *overrides], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, cwd=REPO, timeout=timeout, env=full_env)


def stage2_overrides(rqvae: str, output_dir: str, name: str, *extra) -> list:
    """2 workers x micro-batch 8 = global batch 16, fp32 (the comparisons are exact), checkpoints every 2 steps."""
    return [DEBUG_STAGE2, f"run.output_dir={output_dir}", f"run.name={name}", f"stage2.rqvae_checkpoint={rqvae}",
            "train.num_workers=2", "train.micro_batch=8", "train.global_batch=16", f"train.max_steps={STEPS}",
            f"checkpoint.every_steps={EVERY}", "train.log_every=1", "engine.precision=fp32", *extra]


# Randomness inside the step (condition dropout, stochastic codes): a resumed run must restore RNG.
RANDOM = ("stage2.model.cond_dropout=0.1",)
# No randomness inside the step: 2 ranks and 1 process must then agree to rounding.
DETERMINISTIC = ("stage2.loss.stochastic_codes=false", *UNCONDITIONAL)


def final_weights(run_dir) -> dict:
    state = torch.load(os.path.join(run_dir, "rqtransformer.pt"), map_location="cpu", weights_only=True)
    return state["rqtransformer"]


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= atol, f"largest parameter difference {worst:.3g} > {atol}"


@pytest.fixture(scope="session")
def rqvae_file(trained_stage1):
    return str(trained_stage1[2] / "rqvae.pt")


@pytest.fixture(scope="session")
def ray_runs(tmp_path_factory):
    return tmp_path_factory.mktemp("ray-runs")


@pytest.fixture(scope="session")
def deterministic_run(rqvae_file, ray_runs):
    """2 workers, ZeRO-3, no randomness in the step: the run the equivalence and elastic tests use."""
    proc = train_cli(*stage2_overrides(rqvae_file, ray_runs, "deterministic", *DETERMINISTIC))
    assert proc.returncode == 0, proc.stdout[-4000:]
    return ray_runs / "deterministic", proc.stdout


@pytest.fixture(scope="session")
def random_run(rqvae_file, ray_runs):
    """2 workers, ZeRO-3, dropout of the condition and stochastic codes: the uninterrupted reference."""
    proc = train_cli(*stage2_overrides(rqvae_file, ray_runs, "random", *RANDOM))
    assert proc.returncode == 0, proc.stdout[-4000:]
    return ray_runs / "random", proc.stdout


def copy_checkpoint(src_run, dst_run, step: int) -> None:
    name = f"checkpoint_{step:08d}"
    shutil.copytree(os.path.join(src_run, name), os.path.join(dst_run, name))
