"""Shared fixtures: the debug configs, and trained debug runs of both stages reused across tests.

Both stages train on scikit-learn's real handwritten digits through `rqscale.train.in_process.run`, the
path `python -m rqscale.train` takes.
"""
import os

import pytest

from rqscale.config import load

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBUG_STAGE1 = os.path.join(REPO, "configs", "debug", "stage1.yaml")
DEBUG_STAGE2 = os.path.join(REPO, "configs", "debug", "stage2.yaml")
# The debug stage 2 learns a null class for guided pictures; a test that needs a model without it (no
# condition, or no randomness in the step) drops both.
UNCONDITIONAL = ("stage2.model.cond_dropout=0", "stage2.sampling.cfg_scale=1.0")


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def trained_stage1(runs_dir):
    """300 CPU steps of the debug RQ-VAE on the digits: (cfg, summary, run dir)."""
    from rqscale.train.in_process import run

    cfg = load(DEBUG_STAGE1, [f"run.output_dir={runs_dir}", "run.name=stage1-digits", "data.bundled_set=digits"])
    summary = run(cfg, log=print)
    return cfg, summary, runs_dir / cfg.run.name


@pytest.fixture(scope="session")
def trained_stage2(trained_stage1, runs_dir):
    """300 CPU steps of the class-conditional debug RQ-Transformer on that RQ-VAE's digit codes."""
    from rqscale.train.in_process import run

    rqvae = trained_stage1[2] / "rqvae.pt"
    cfg = load(DEBUG_STAGE2, [f"run.output_dir={runs_dir}", "run.name=stage2-digits", f"stage2.rqvae_checkpoint={rqvae}"])
    summary = run(cfg, log=print)
    return cfg, summary, runs_dir / cfg.run.name


# Fixtures that train a debug model (minutes on 2 cores): a test that needs one is in the slow tier.
TRAINING_FIXTURES = {"trained_stage1", "trained_stage2", "rqvae_file", "deterministic_run", "random_run", "two_step_run", "probed", "latent_setup", "text_model"}


def pytest_collection_modifyitems(config, items):
    """The quick loop, `pytest -m "not slow"`, leaves out every test that trains through a fixture, whether
    or not the test itself is marked; CI still runs everything."""
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
