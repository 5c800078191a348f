"""The DQ-Transformer trains on DQ-VAE codes through the real loop and engine (rqscale.train.in_process.run:
DeepSpeed, packed variable-length rows, checkpoints, export), reports its loss parts and padding, and its
exported checkpoint samples through `python -m rqscale.sample`, which refuses contextual-only flags for it."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from rqscale.config import load
from rqscale.models import build_stage1_model
from tests.conftest import REPO

pytestmark = pytest.mark.slow

DEBUG = f"{REPO}/configs/debug/dq_stage2.yaml"


@pytest.fixture(scope="module")
def dq_stage2_run(tmp_path_factory):
    from rqscale.train.in_process import run

    root = tmp_path_factory.mktemp("dq2")
    cfg = load(DEBUG, check_files=False)
    torch.manual_seed(0)  # an untrained DQ-VAE: its codes are still a fixed function of the digits
    torch.save(build_stage1_model(cfg.rqvae).state_dict(), root / "dqvae.pt")
    cfg = load(DEBUG, [f"run.output_dir={root}", "run.name=dqt", f"stage2.rqvae_checkpoint={root / 'dqvae.pt'}",
                       "train.max_steps=40", "train.log_every=10", "checkpoint.every_steps=20"])
    return cfg, run(cfg, log=print), root / "dqt"


def test_the_loss_falls_and_the_parts_and_padding_are_reported(dq_stage2_run):
    cfg, summary, run_dir = dq_stage2_run
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    logged = [r for r in records if "padding" in r]
    assert logged and all(0.0 <= r["padding"] < 0.5 for r in logged)
    assert all({"content", "coarse_position", "fine_position"} <= set(r) for r in logged)
    assert summary["steps"] == 40 and summary["loss_last_step"] < 0.5 * summary["loss_first_step"]
    assert set(summary["loss_parts_last_step"]) == {"content", "coarse_position", "fine_position", "padding"}
    assert (run_dir / "samples.png").stat().st_size > 0


def sample_cli(out, checkpoint, *args):
    return subprocess.run([sys.executable, "-m", "rqscale.sample", "--checkpoint", str(checkpoint), "--out", str(out), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_rqscale_sample_decodes_the_exported_checkpoint(dq_stage2_run, tmp_path):
    _, _, run_dir = dq_stage2_run
    done = sample_cli(tmp_path / "out", run_dir / "rqtransformer.pt", "--num-samples", "12", "--class-label", "3", "7")
    assert done.returncode == 0, done.stderr
    arrays = np.load(next((tmp_path / "out").glob("*.npz")))
    assert arrays["images"].shape[0] == 12 and set(arrays["labels"].tolist()) == {3, 7}


def test_contextual_flags_on_a_dq_checkpoint_are_refused_naming_its_kind(dq_stage2_run, tmp_path):
    _, _, run_dir = dq_stage2_run
    done = sample_cli(tmp_path / "out", run_dir / "rqtransformer.pt", "--num-samples", "2", "--class-label", "1",
                      "--draft-steps", "4")
    assert done.returncode != 0 and "--draft-steps" in done.stderr and "kind=dq" in done.stderr
    assert "Traceback" not in done.stderr
