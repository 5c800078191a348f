"""Latent pre-extraction on Ray: latents written then read give the soft labels of on-the-fly encoding."""
import subprocess
import sys

import pytest
import torch

from data_prep.latents import extract
from data_prep.shards import write_shards
from rqscale.config import load
from rqscale.data.reader import ResumableLoader, load_shards
from rqscale.data.transforms import to_unit_range
from rqscale.models import RQVAE
from rqscale.tasks import Stage2Task
from tests.conftest import DEBUG_STAGE2, REPO
from tests.data.test_reader import first_digits


@pytest.fixture(scope="module")
def latent_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("latents")
    write_shards(first_digits(96), str(root / "images"), "digits", max_samples=32)
    cfg = load(DEBUG_STAGE2, check_files=False)
    torch.manual_seed(0)
    rqvae = RQVAE(cfg.rqvae)
    torch.save(rqvae.state_dict(), root / "rqvae.pt")
    manifest = extract(DEBUG_STAGE2, str(root / "rqvae.pt"), str(root / "images" / "manifest.json"), str(root / "latents"), local_cpus=2)
    return root, cfg, rqvae, manifest


def epoch(manifest_url):
    return list(ResumableLoader(load_shards(manifest_url), 32, 0, 1, seed=1, resolution=32, train=False).epoch_batches())


def test_latent_soft_labels_match_on_the_fly_encoding(latent_setup):
    root, cfg, rqvae, manifest = latent_setup
    assert manifest["samples"] == 96 and manifest["latent_shape"] == [8, 8, 64] and len(manifest["shards"]) == 3
    task = Stage2Task(cfg, rqvae)
    for images, latents in zip(epoch(str(root / "images" / "manifest.json")), epoch(str(root / "latents" / "manifest.json"))):
        assert images["keys"] == latents["keys"] and torch.equal(images["cond"], latents["cond"])
        on_the_fly = task.latents({"images": to_unit_range(images["images"])})
        stored = task.latents({"latents": latents["latents"]})
        assert torch.allclose(stored, on_the_fly, rtol=1e-2, atol=1e-2)  # bf16 storage
        p1, _ = task.targets(on_the_fly, torch.Generator().manual_seed(0))
        p2, _ = task.targets(stored, torch.Generator().manual_seed(0))
        assert (p1[:, :, 0] - p2[:, :, 0]).abs().max() < 0.05  # depth-1 soft labels: a function of Z alone
        quantizer = task.rqvae.quantizer
        greedy = (quantizer.encode(on_the_fly) == quantizer.encode(stored)).float().mean()
        assert greedy > 0.97  # later depths follow the codes; bf16 rounding flips only near-ties


def test_rerun_skips_finished_shards(latent_setup, tmp_path):
    root, _, _, manifest = latent_setup
    again = extract(DEBUG_STAGE2, str(root / "rqvae.pt"), str(root / "images" / "manifest.json"), str(root / "latents"), local_cpus=2)
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in manifest["shards"]]


def test_missing_rqvae_is_named(latent_setup, tmp_path):
    root = latent_setup[0]
    proc = subprocess.run([sys.executable, "-m", "data_prep.latents", "--rqvae", str(tmp_path / "none.pt"), "--config", DEBUG_STAGE2,
                           "--shards", str(root / "images" / "manifest.json"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "none.pt" in proc.stderr


@pytest.mark.slow
def test_stage2_trains_from_latent_shards(latent_setup, tmp_path):
    root = latent_setup[0]
    proc = subprocess.run([sys.executable, "-m", "rqscale.train", DEBUG_STAGE2, f"run.output_dir={tmp_path}", "train.max_steps=3",
                           "data.kind=webdataset", f"data.shards={root / 'latents' / 'manifest.json'}",
                           f"stage2.rqvae_checkpoint={root / 'rqvae.pt'}"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "debug-stage2" / "rqtransformer.pt").exists()
