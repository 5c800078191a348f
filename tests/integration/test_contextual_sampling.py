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


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    """A 48 x 48 digit (scikit-learn's, upscaled) and masks: its lower half, and one of the wrong size."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("inpaint")
    digit = (load_digits().images[3] * 255 / 16).astype(np.uint8)
    Image.fromarray(digit).convert("RGB").resize((48, 48)).save(root / "digit.png")
    lower = np.zeros((48, 48), np.uint8)
    lower[24:] = 255
    Image.fromarray(lower).save(root / "lower.png")
    Image.fromarray(lower[:40]).save(root / "short.png")
    return {name: str(root / f"{name}.png") for name in ("digit", "lower", "short")}


@pytest.mark.parametrize("family, args, message", [
    ("contextual", ("--revise-steps", "65"), "--revise-steps 65: the model has 64 positions"),
    ("contextual", ("--draft-steps", "0"), "--draft-steps 0: the model has 64 positions"),
    ("contextual", ("--draft-strategy", "best"), "--draft-strategy 'best': use one of random, top-c, top-c-50"),
    ("contextual", ("--draft-top-k", "300"), "--draft-top-k must be in [0, K=256], got 300"),
    ("contextual", ("--draft-temperature", "1", "0.9"), "--draft-temperature has 2 values but the model has D=4 depths"),
    ("contextual", ("--inpaint", "{digit}", "--mask", "{short}"), "is 48x40 but the --inpaint picture is 48x48"),
    ("contextual", ("--inpaint", "{digit}"), "--inpaint IMAGE and --mask MASK_PNG go together"),
    ("contextual", ("--save-draft", "--classifier", "x.pt", "--acceptance-rate", "0.5"), "--save-draft cannot be combined with --classifier"),
    ("ar", ("--draft-steps", "8"), "--draft-steps: this flag needs a contextual checkpoint"),
    ("ar", ("--inpaint", "{digit}", "--mask", "{lower}"), "--inpaint, --mask: these flags need a contextual checkpoint"),
    ("ar", ("--save-draft",), "--save-draft: this flag needs a contextual checkpoint"),
])
def test_draft_and_revise_flags_are_checked_against_the_checkpoint(checkpoints, picture, tmp_path, family, args, message):
    proc = run_cli(tmp_path, checkpoints[family], *[a.format(**picture) for a in args])
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_inpainting_keeps_the_picture_outside_the_mask_and_drafts_are_written(checkpoints, picture, tmp_path):
    proc = run_cli(tmp_path, checkpoints["contextual"], "--inpaint", picture["digit"], "--mask", picture["lower"],
                   "--draft-steps", "64", "--revise-iterations", "1", "--save-draft")
    assert proc.returncode == 0, proc.stderr
    assert "the mask leaves 32 positions to fill; --draft-steps 64 becomes 32" in proc.stderr  # a group per position at most
    revised, drafts = (np.load(tmp_path / "out" / sub / "samples.npz")["images"].astype(float) for sub in ("", "drafts"))
    assert revised.shape == drafts.shape == (3, 32, 32, 3) and not np.array_equal(revised, drafts)
    spread = revised.std(axis=0).mean(axis=(1, 2))  # per image row: how much the 3 samples differ
    assert spread[:8].mean() < 0.25 * spread[16:].mean(), spread  # kept codes above (the decoder blurs the border)
