"""The DQ-VAE trains as stage 1 on the same loop and engine as the RQ-VAE (rqscale.train.in_process.run:
DeepSpeed, checkpoints, export): its telemetry carries the fine share and the codes per image, its picture
outlines the fine regions, and the exported rqvae.pt is a DQ-VAE the tools load."""
import json

import pytest
import torch

from rqscale.config import load
from rqscale.models import DQVAE
from tests.conftest import REPO

pytestmark = pytest.mark.slow

DEBUG_DQ = f"{REPO}/configs/debug/dq_stage1.yaml"


@pytest.fixture(scope="module")
def dq_run(tmp_path_factory):
    from rqscale.train.in_process import run

    root = tmp_path_factory.mktemp("dq")
    cfg = load(DEBUG_DQ, [f"run.output_dir={root}", "run.name=dq", "train.max_steps=12", "train.log_every=3",
                          "checkpoint.every_steps=6"])
    return cfg, run(cfg, log=print), root / "dq"


def test_telemetry_reports_the_fine_share_and_the_codes_per_image(dq_run):
    cfg, summary, run_dir = dq_run
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    logged = [r for r in records if "g/fine_share" in r]
    assert logged and all(0.0 <= r["g/fine_share"] <= 1.0 for r in logged)
    regions = (cfg.rqvae.resolution // 16) ** 2  # 16 at 64 x 64
    # one code per coarse region, four per fine one: 16 + 3 x (fine regions), the batch's mean
    assert all(r["g/codes_per_image"] == pytest.approx(regions * (1 + 3 * r["g/fine_share"]), rel=1e-4) for r in logged)
    assert all("g/budget" in r for r in logged) and summary["steps"] == 12


def test_the_picture_and_the_exported_weights(dq_run):
    cfg, summary, run_dir = dq_run
    assert summary["picture"].endswith("reconstructions.png") and (run_dir / "reconstructions.png").stat().st_size > 0
    model = DQVAE(cfg.rqvae)
    model.load_state_dict(torch.load(summary["weights"], map_location="cpu", weights_only=True))
    codes, grain = model.eval().encode_with_grain(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert codes.shape == (2, 8, 8, 1) and grain.shape == (2, 4, 4)
