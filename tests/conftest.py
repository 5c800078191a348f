"""Shared fixtures: the debug stage-1 config and one trained debug run reused by several tests."""
import os

import pytest

from rqscale.config import load

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBUG_STAGE1 = os.path.join(REPO, "configs", "debug", "stage1.yaml")


@pytest.fixture(scope="session")
def trained_stage1(tmp_path_factory):
    """A few hundred CPU steps of the debug RQ-VAE on bundled photos, run through rqscale.train.loop."""
    from rqscale.train.loop import run

    out = tmp_path_factory.mktemp("runs")
    cfg = load(DEBUG_STAGE1, [f"run.output_dir={out}"])
    summary = run(cfg, log=print)
    return cfg, summary, out / cfg.run.name
