"""The debug RQ-VAE trained through the real loop on real bundled images."""
import json
import os
import subprocess
import sys

import numpy as np
import torch
import pytest
from PIL import Image

from rqscale.config import load
from rqscale.engine.precision import with_resolved_precision
from tests.conftest import DEBUG_STAGE1, REPO

pytestmark = pytest.mark.slow


def test_reconstruction_mse_drops_5x(trained_stage1):
    _, summary, _ = trained_stage1
    print(f"eval MSE {summary['eval_mse_before']:.4f} -> {summary['eval_mse_after']:.4f} "
          f"({summary['mse_reduction']:.1f}x), codebook usage {summary['codebook_usage']:.3f}")
    assert summary["mse_reduction"] >= 5.0
    assert 0.0 < summary["codebook_usage"] <= 1.0


def test_coarse_to_fine_is_monotone(trained_stage1):
    mse = trained_stage1[1]["mse_by_depth"]
    assert len(mse) == 4
    assert all(later <= earlier for earlier, later in zip(mse, mse[1:])), mse  # cf. Table A.2
    assert mse[-1] < mse[0]


def test_run_outputs(trained_stage1):
    cfg, summary, run_dir = trained_stage1
    assert load(str(run_dir / "config.yaml")) == with_resolved_precision(cfg, torch.device("cpu"))  # what ran
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert len(rows) == cfg.train.max_steps
    gan_steps = [r["step"] for r in rows if "d/total" in r]
    assert gan_steps == list(range(cfg.stage1.loss.disc_start, cfg.train.max_steps))  # GAN on from disc_start
    image = np.asarray(Image.open(summary["picture"]))
    assert image.ndim == 3 and image.shape[0] < image.shape[1]  # 5 rows (input + 4 depths) x 8 columns
    assert image.std() > 10  # a real picture, not a blank canvas


def test_cli_runs_end_to_end_with_paths_relative_to_the_caller(tmp_path):
    """Ray runs its workers in a session directory: a relative run.output_dir must still mean the
    directory `python -m rqscale.train` was typed in."""
    proc = subprocess.run(
        [sys.executable, "-m", "rqscale.train", DEBUG_STAGE1, "run.output_dir=relative-runs", "train.max_steps=3",
         "stage1.loss.disc_start=1", "data.num_samples=64"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": REPO},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reconstructions written to" in proc.stdout
    assert os.path.isfile(tmp_path / "relative-runs" / "debug-stage1" / "reconstructions.png")
    assert os.path.isfile(tmp_path / "relative-runs" / "debug-stage1" / "checkpoint_00000003" / "rqscale_complete.json")
