"""Shared fixtures: the debug configs, and trained debug runs of both stages reused across tests.

Both stages train on scikit-learn's real handwritten digits through `rqscale.train.loop.run`, the
path `python -m rqscale.train` takes.
"""
import os

import pytest

from rqscale.config import load

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBUG_STAGE1 = os.path.join(REPO, "configs", "debug", "stage1.yaml")
DEBUG_STAGE2 = os.path.join(REPO, "configs", "debug", "stage2.yaml")


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def trained_stage1(runs_dir):
    """300 CPU steps of the debug RQ-VAE on the digits: (cfg, summary, run dir)."""
    from rqscale.train.loop import run

    cfg = load(DEBUG_STAGE1, [f"run.output_dir={runs_dir}", "run.name=stage1-digits", "data.bundled_set=digits"])
    summary = run(cfg, log=print)
    return cfg, summary, runs_dir / cfg.run.name


@pytest.fixture(scope="session")
def trained_stage2(trained_stage1, runs_dir):
    """300 CPU steps of the class-conditional debug RQ-Transformer on that RQ-VAE's digit codes."""
    from rqscale.train.loop import run

    rqvae = trained_stage1[2] / "rqvae.pt"
    cfg = load(DEBUG_STAGE2, [f"run.output_dir={runs_dir}", "run.name=stage2-digits", f"stage2.rqvae_checkpoint={rqvae}"])
    summary = run(cfg, log=print)
    return cfg, summary, runs_dir / cfg.run.name
