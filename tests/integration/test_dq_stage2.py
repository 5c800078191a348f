"""The DQ-Transformer trains on DQ-VAE codes through the real loop and engine (rqscale.train.in_process.run:
DeepSpeed, packed variable-length rows, checkpoints, export), reports its loss parts and padding, and its
exported checkpoint samples through `python -m rqscale.sample`, which refuses contextual-only flags for it;
`python -m rqscale.evaluate` reports a DQ-VAE's codes per image and a DQ-Transformer's FID."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from rqscale.config import load
from rqscale.models import build_stage1_model
from tests.conftest import REPO
from tests.integration.test_evaluate import demo, evaluate, finite  # noqa: F401 (demo: the shards and extractor fixture)

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
    done = sample_cli(tmp_path / "out", run_dir / "rqtransformer.pt", "--num-samples", "2", "--class-label", "1", "--cfg-scale", "2")
    assert done.returncode != 0 and "--cfg-scale" in done.stderr and "Traceback" not in done.stderr


def test_evaluate_reports_a_dq_vaes_codes_per_image_and_a_dq_transformers_fid(dq_stage2_run, demo, tmp_path):
    cfg, _, run_dir = dq_stage2_run
    recon = tmp_path / "recon.json"
    evaluate("recon", "--rqvae", cfg.stage2.rqvae_checkpoint, "--rqvae-config", DEBUG, "--reference", demo["digits"],
             "--num-images", "100", "--feature-extractor", demo["extractor"], "--local", "--out", str(recon))
    counts = json.loads(recon.read_text())["codes_per_image"]
    regions = 4  # 2 x 2 regions at 32 x 32: 4 codes when all coarse, 16 when all fine
    assert regions <= counts["min"] <= counts["mean"] <= counts["max"] <= 4 * regions and counts["std"] >= 0
    samples = tmp_path / "samples.json"
    evaluate("samples", "--checkpoint", str(run_dir / "rqtransformer.pt"), "--reference", demo["digits"], "--num-samples", "40",
             "--class-balanced", "--feature-extractor", demo["extractor"], "--local", "--speed-batches", "4", "--out", str(samples))
    report = json.loads(samples.read_text())
    assert report["num_samples"] == 40 and finite(report, "fid", "is", "precision", "recall")
    assert [row["batch"] for row in report["speed"]] == [4] and report["speed"][0]["seconds_per_image"] > 0


def test_the_equal_budget_comparison_reports_both_numbers():
    """`python -m rqscale.bench dq-budget`, shortened: the DQ-VAE's error at its mean code count beside fixed-grain
    VQ at F = 16 (4 codes) and F = 8 (16 codes), interpolated to that count."""
    from rqscale.bench import dq_budget

    r = dq_budget.run(steps=4, held_out=40)
    rows = r["models"]
    assert rows["vq_f16"]["codes_per_image"] == 4 and rows["vq_f8"]["codes_per_image"] == 16
    for name in ("dq", "dq_entropy"):  # the learned router and the entropy router
        assert 4 <= rows[name]["codes_per_image"] <= 16 and rows[name]["codes_std"] >= 0
        assert np.isfinite(r["dq_mse_vs_fixed"][name])
    # The entropy threshold is the training digits' median region entropy, so about half the held-out regions are fine.
    assert abs(rows["dq_entropy"]["codes_per_image"] - 10) < 1.5
    assert all(np.isfinite(row["mse"]) for row in rows.values())
    assert "dq_entropy MSE / fixed-grain MSE" in dq_budget.report(r)
