"""`python -m rqscale.sample` on a contextual checkpoint (Draft-and-Revise), and its flags refused where
they do not apply, naming the flag."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from rqscale.config import load
from rqscale.models import RQVAE, build_stage2_model
from rqscale.sampling.checkpoint import save_consolidated
from tests.conftest import DEBUG_STAGE2, REPO

DEBUG_CONTEXTUAL = f"{REPO}/configs/debug/contextual.yaml"


def random_checkpoint(path, config: str) -> str:
    """A randomly initialised debug model of `config`'s family, saved as rqscale.sample reads it."""
    cfg = load(config, check_files=False)
    torch.manual_seed(0)
    rqvae = RQVAE(cfg.rqvae)
    model = build_stage2_model(cfg.stage2.model, cfg.rqvae.code_shape, cfg.rqvae.num_codes, cfg.rqvae.code_dim)
    model.codebook.copy_(rqvae.quantizer.codebook)
    return save_consolidated(str(path), cfg, rqvae, model)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {"contextual": random_checkpoint(root / "ctx.pt", DEBUG_CONTEXTUAL), "ar": random_checkpoint(root / "ar.pt", DEBUG_STAGE2)}


def run_cli(tmp_path, checkpoint, *args):
    return subprocess.run([sys.executable, "-m", "rqscale.sample", "--checkpoint", checkpoint, "--out", str(tmp_path / "out"),
                           "--num-samples", "3", "--class-label", "1", "7", *args], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_a_contextual_checkpoint_samples_by_draft_and_revise(checkpoints, tmp_path):
    proc = run_cli(tmp_path, checkpoints["contextual"], "--draft-steps", "4", "--revise-steps", "2", "--revise-iterations", "1",
                   "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    first = np.load(tmp_path / "out" / "samples.npz")
    assert first["images"].shape == (3, 32, 32, 3) and list(first["labels"]) == [1, 7, 1]
    again = run_cli(tmp_path / "again", checkpoints["contextual"], "--draft-steps", "4", "--revise-steps", "2",
                    "--revise-iterations", "1", "--seed", "3")
    assert again.returncode == 0 and np.array_equal(np.load(tmp_path / "again" / "out" / "samples.npz")["images"], first["images"])


@pytest.mark.parametrize("family, args, message", [
    ("contextual", ("--revise-steps", "65"), "--revise-steps 65: the model has 64 positions"),
    ("contextual", ("--draft-steps", "0"), "--draft-steps 0: the model has 64 positions"),
    ("ar", ("--draft-steps", "8"), "--draft-steps: Draft-and-Revise flags need a contextual checkpoint"),
])
def test_draft_and_revise_flags_are_checked_against_the_checkpoint(checkpoints, tmp_path, family, args, message):
    proc = run_cli(tmp_path, checkpoints[family], *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
