"""The debug RQ-Transformer trained through the real loop on codes of real digits, and sampled."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from rqscale.config import load
from rqscale.data import digits
from rqscale.models import RQVAE
from rqscale.sampling import SamplingParams, sample_codes
from rqscale.sampling.checkpoint import load_consolidated
from rqscale.tasks import Stage2Task
from rqscale.train.stage2 import Stage2Trainer
from tests.conftest import DEBUG_STAGE2, REPO

pytestmark = pytest.mark.slow


def test_overfits_a_fixed_batch_of_codes():
    cfg = load(DEBUG_STAGE2, ["stage2.loss.temperature=0", "stage2.loss.stochastic_codes=false",
                              "stage2.optim.warmup_steps=0", "stage2.optim.schedule=constant", "train.max_steps=150"],
               check_files=False)
    torch.manual_seed(0)
    task = Stage2Task(cfg, RQVAE(cfg.rqvae))
    trainer = Stage2Trainer(task, cfg)
    batch = {"latents": torch.randn(4, 8, 8, cfg.rqvae.code_dim), "cond": torch.tensor([0, 1, 2, 3])}
    losses = [trainer.step([batch], step)["image"] for step in range(150)]
    print(f"fixed-batch loss {losses[0]:.3f} -> {losses[-1]:.4f}")
    assert losses[0] > 4.0 and losses[-1] < 0.05


def nearest_centroid_accuracy(images: torch.Tensor, labels: torch.Tensor) -> float:
    real, real_labels = digits(images.shape[-1])
    centroids = torch.stack([real[real_labels == c].mean(0) for c in range(10)])
    predicted = torch.cdist(images.flatten(1), centroids.flatten(1)).argmin(1)
    return (predicted == labels).float().mean().item()


def test_class_conditional_samples_differ_by_class(trained_stage2):
    _, summary, run_dir = trained_stage2
    assert summary["loss_last_step"] < summary["loss_first_step"] - 0.5
    cfg, rqvae, model = load_consolidated(str(run_dir / "rqtransformer.pt"))
    labels = torch.arange(10).repeat_interleave(20)
    codes = sample_codes(model, len(labels), labels, SamplingParams(), torch.Generator().manual_seed(0))
    images = rqvae.decode_codes(codes.view(len(labels), *cfg.rqvae.code_shape)).clamp(-1, 1)
    accuracy = nearest_centroid_accuracy(images, labels)
    print(f"nearest-centroid accuracy of class-conditional samples: {accuracy:.3f} (chance 0.1)")
    assert accuracy >= 0.25


def sample_cli(tmp_path, checkpoint, *args):
    return subprocess.run([sys.executable, "-m", "rqscale.sample", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_sample_cli_writes_grid_pngs_and_npz(trained_stage2, tmp_path):
    ckpt = trained_stage2[2] / "rqtransformer.pt"
    proc = sample_cli(tmp_path, ckpt, "--num-samples", "6", "--class-label", "3", "7", "--top-k", "64", "--top-p", "0.9",
                      "--temperature", "1.0", "0.9", "0.9", "0.8", "--cfg-scale", "1.0")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    data = np.load(out / "samples.npz")
    assert data["images"].shape == (6, 32, 32, 3) and data["images"].dtype == np.uint8
    assert data["labels"].tolist() == [3, 7, 3, 7, 3, 7]
    assert os.path.isfile(out / "grid.png") and os.path.isfile(out / "sample_00005.png")


@pytest.mark.parametrize("args, words", [
    (["--num-samples", "2", "--class-label", "1", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--num-samples", "2", "--class-label", "1", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--num-samples", "2", "--class-label", "12"], "unknown class label(s) [12]"),
    (["--num-samples", "2", "--text", "a seven"], "class-conditional"),
    (["--num-samples", "2", "--class-label", "1", "--top-k", "5", "5"], "D=4"),
    (["--num-samples", "2", "--class-label", "1", "--cfg-scale", "-1"], "--cfg-scale must be >= 0"),
    (["--num-samples", "2", "--class-label", "1", "--batch-size", "0"], "--batch-size"),
])
def test_sample_cli_rejects_bad_arguments(trained_stage2, tmp_path, args, words):
    proc = sample_cli(tmp_path, trained_stage2[2] / "rqtransformer.pt", *args)
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_sample_cli_missing_checkpoint_names_it(tmp_path):
    proc = sample_cli(tmp_path, tmp_path / "missing.pt", "--num-samples", "1")
    assert proc.returncode == 2 and "missing.pt" in proc.stderr


def test_rejection_sampling_keeps_requested_count(trained_stage2, tmp_path):
    # A real classifier of these digits: nearest centroid of the real images, scripted as TorchScript.
    real, real_labels = digits(32)
    centroids = torch.stack([real[real_labels == c].mean(0) for c in range(10)]).flatten(1)

    class NearestCentroid(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("centroids", centroids)

        def forward(self, x):
            return -torch.cdist(x.flatten(1), self.centroids)

    torch.jit.script(NearestCentroid()).save(str(tmp_path / "classifier.pt"))
    proc = sample_cli(tmp_path, trained_stage2[2] / "rqtransformer.pt", "--num-samples", "4", "--class-label", "0", "1",
                      "--classifier", str(tmp_path / "classifier.pt"), "--acceptance-rate", "0.5")
    assert proc.returncode == 0, proc.stderr
    data = np.load(tmp_path / "out" / "samples.npz")
    assert sorted(data["labels"].tolist()) == [0, 0, 1, 1]
