"""Pre-extracted DQ-VAE codes (data_prep.latents of a DQ-VAE): variable-length code sequences and grain maps
in shards, read back exactly, with the sequence lengths on the host so the DQ-Transformer's packing reads
nothing back from the device; the same loss as encoding the images on the fly; and shards of the wrong
kind refused before any worker starts."""
import json
import subprocess
import sys

import pytest
import torch

from data_prep.latents import extract
from data_prep.shards import write_shards
from rqscale.config import ConfigError, load
from rqscale.data.dq_sequence import sequence_lengths
from rqscale.data.latents import dq_code_bytes, dq_codes_from_bytes
from rqscale.data.reader import ResumableLoader, load_shards
from rqscale.data.transforms import to_unit_range
from rqscale.models import build_stage1_model
from rqscale.tasks.dq_stage2 import DQStage2Task
from tests.conftest import DEBUG_STAGE2, REPO
from tests.data.test_reader import first_digits

DQ_STAGE2 = f"{REPO}/configs/debug/dq_stage2.yaml"


def random_code_map(h: int, w: int, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    grain = torch.randint(0, 2, (h, w), generator=g)
    coarse = torch.randint(0, 1024, (h, w), generator=g).repeat_interleave(2, 0).repeat_interleave(2, 1)
    fine = grain.bool().repeat_interleave(2, 0).repeat_interleave(2, 1)
    return torch.where(fine, torch.randint(0, 1024, (2 * h, 2 * w), generator=g), coarse).unsqueeze(-1), grain


@pytest.mark.parametrize("seed", range(5))
def test_codes_and_grain_round_trip_through_their_fields_for_random_grain_maps(seed):
    codes, grain = random_code_map(4, 6, seed)
    code_field, grain_field = dq_code_bytes(codes, grain)
    assert len(code_field) == 2 * (24 + 3 * int(grain.sum()))  # variable length: one code per coarse region, four per fine
    back_codes, back_grain = dq_codes_from_bytes(code_field, grain_field, (4, 6))
    assert torch.equal(back_codes, codes) and torch.equal(back_grain, grain)


def test_fields_that_disagree_are_refused():
    codes, grain = random_code_map(2, 2, 0)
    code_field, grain_field = dq_code_bytes(codes, grain)
    with pytest.raises(ValueError, match="bytes"):
        dq_codes_from_bytes(code_field[:-2], grain_field, (2, 2))
    with pytest.raises(ValueError, match="grain map"):
        dq_codes_from_bytes(code_field, grain_field + b"\x00", (2, 2))


@pytest.fixture(scope="module")
def dq_codes(tmp_path_factory):
    root = tmp_path_factory.mktemp("dq_codes")
    write_shards(first_digits(64), str(root / "images"), "digits", max_samples=32)
    cfg = load(DQ_STAGE2, check_files=False)
    torch.manual_seed(0)  # an untrained DQ-VAE: its codes and grains are still a fixed function of the digits
    dqvae = build_stage1_model(cfg.rqvae).eval()
    torch.save(dqvae.state_dict(), root / "dqvae.pt")
    manifest = extract(DQ_STAGE2, str(root / "dqvae.pt"), str(root / "images" / "manifest.json"), str(root / "codes"), local_cpus=2)
    return root, cfg, dqvae, manifest


def epoch(manifest_url):
    return list(ResumableLoader(load_shards(manifest_url), 32, 0, 1, seed=1, resolution=32, train=False).epoch_batches())


def test_stored_codes_are_the_dq_vae_s_and_give_the_on_the_fly_loss(dq_codes):
    root, cfg, dqvae, manifest = dq_codes
    assert manifest["samples"] == 64 and manifest["dq_grain_shape"] == [2, 2] and "latent_shape" not in manifest
    assert manifest["dq_num_codes"] == cfg.rqvae.num_codes
    task = DQStage2Task(cfg, dqvae).eval()  # eval: no dropout, so the two losses can be compared exactly
    for images, stored in zip(epoch(str(root / "images" / "manifest.json")), epoch(str(root / "codes" / "manifest.json"))):
        assert images["keys"] == stored["keys"] and torch.equal(images["cond"], stored["cond"])
        pixels = to_unit_range(images["images"])
        codes, grain = dqvae.encode_with_grain(pixels)
        assert torch.equal(stored["codes"], codes) and torch.equal(stored["grain"], grain)
        assert stored["lengths"].device.type == "cpu" and torch.equal(stored["lengths"], sequence_lengths(grain))
        assert 0 < grain.sum() < grain.numel()  # both grains occur, so the layout is really exercised
        with torch.no_grad():
            on_the_fly = task.losses({"images": pixels, "cond": images["cond"]})
            from_shards = task.losses({k: stored[k] for k in ("codes", "grain", "lengths")} | {"cond": stored["cond"]})
        for part in ("total", "content", "coarse_position", "fine_position"):
            assert torch.equal(from_shards[part], on_the_fly[part]), part


def test_lengths_that_reached_the_device_are_refused_rather_than_read_back():
    from rqscale.tasks.dq_stage2 import _host_list
    from rqscale.train.loop import batch_to_device

    moved = batch_to_device({"codes": torch.zeros(2, 4, 4, 1), "lengths": torch.tensor([9, 12])}, "meta")
    assert moved["codes"].device.type == "meta" and moved["lengths"].device.type == "cpu"  # the loop keeps lengths home
    assert _host_list(moved["lengths"]) == [9, 12]
    with pytest.raises(ValueError, match="host"):
        _host_list(torch.tensor([9, 12], device="meta"))


def test_a_corrupt_code_sample_is_skipped_and_counted(dq_codes, tmp_path):
    root = dq_codes[0]
    manifest = json.loads((root / "codes" / "manifest.json").read_text())
    shard = load_shards(str(root / "codes" / "manifest.json"))[0]
    from rqscale.data.reader import read_run

    raws = read_run(shard, 0, shard.samples)
    raws[3]["dqcodes.u16"] = raws[3]["dqcodes.u16"][:-2]  # one code short of its grain map
    write_shards(raws, str(tmp_path / "bad"), "dq-codes", max_samples=32)
    bad = json.loads((tmp_path / "bad" / "manifest.json").read_text())
    bad["dq_grain_shape"] = manifest["dq_grain_shape"]
    (tmp_path / "bad" / "manifest.json").write_text(json.dumps(bad))
    loader = ResumableLoader(load_shards(str(tmp_path / "bad" / "manifest.json")), 32, 0, 1, seed=1, resolution=32,
                             train=False, max_bad_samples=5)
    batch = next(loader.epoch_batches())
    assert len(batch["keys"]) == 31 and loader.bad_samples_total == 1
    assert "bytes" in loader.bad_examples[0][1]


@pytest.mark.parametrize("config, overrides, shards, wanted", [
    (DEBUG_STAGE2, [], "codes", "stage2.model.kind=dq only"),  # DQ codes to an RQ-Transformer
    (f"{REPO}/configs/debug/dq_stage1_digits.yaml", [], "codes", "stage2.model.kind=dq only"),  # to stage 1
    (DQ_STAGE2, ["rqvae.code_shape=[8,8,1]", "rqvae.resolution=64", "stage2.model.max_length=260"], "codes", "grain maps of [2, 2]"),
])
def test_shards_of_the_wrong_kind_are_refused_before_workers_start(dq_codes, config, overrides, shards, wanted):
    from rqscale.train.in_process import check_runnable

    root = dq_codes[0]
    cfg = load(config, [*overrides, "data.kind=webdataset", f"data.shards={root / shards / 'manifest.json'}"], check_files=False)
    with pytest.raises(ConfigError, match=r"data\.shards") as err:
        check_runnable(cfg)
    assert wanted in str(err.value)


def manifest_at(tmp_path, **fields) -> str:
    (tmp_path / "manifest.json").write_text(json.dumps({**fields, "shards": []}))
    return str(tmp_path / "manifest.json")


@pytest.mark.parametrize("config, overrides, fields", [
    (DEBUG_STAGE2, [], {"latent_shape": [8, 8, 64]}),  # an RQ-Transformer on RQ-VAE latents
    (DEBUG_STAGE2, ["stage2.model.kind=contextual"], {"latent_shape": [8, 8, 64]}),  # a contextual one too
    (DQ_STAGE2, [], {"dq_grain_shape": [2, 2], "dq_num_codes": 256}),  # the DQ-Transformer on DQ-VAE codes
    (DQ_STAGE2, [], {}),  # image shards: every model encodes them itself
])
def test_shards_of_the_right_kind_are_accepted(tmp_path, config, overrides, fields):
    from rqscale.data.pipeline import check_shard_kind

    shards = manifest_at(tmp_path, **fields)
    check_shard_kind(load(config, [*overrides, "data.kind=webdataset", f"data.shards={shards}"], check_files=False))


def test_codes_of_another_codebook_size_are_refused(tmp_path):
    from rqscale.data.pipeline import check_shard_kind

    shards = manifest_at(tmp_path, dq_grain_shape=[2, 2], dq_num_codes=1024)
    with pytest.raises(ConfigError, match="1024-entry codebook"):
        check_shard_kind(load(DQ_STAGE2, ["data.kind=webdataset", f"data.shards={shards}"], check_files=False))


def test_an_unreadable_manifest_is_a_config_error_naming_the_key(tmp_path):
    from rqscale.data.pipeline import check_shard_kind

    (tmp_path / "manifest.json").write_text("{not json")
    for shards in (str(tmp_path / "manifest.json"), str(tmp_path / "missing" / "manifest.json")):
        with pytest.raises(ConfigError, match=r"data\.shards"):
            check_shard_kind(load(DQ_STAGE2, ["data.kind=webdataset", f"data.shards={shards}"], check_files=False))


def test_an_rq_vae_s_latents_are_refused_for_the_dq_transformer(tmp_path):
    from rqscale.data.pipeline import check_shard_kind

    (tmp_path / "manifest.json").write_text(json.dumps({"latent_shape": [4, 4, 64], "shards": []}))
    cfg = load(DQ_STAGE2, ["data.kind=webdataset", f"data.shards={tmp_path / 'manifest.json'}"], check_files=False)
    with pytest.raises(ConfigError, match="RQ-VAE's latents"):
        check_shard_kind(cfg)


@pytest.mark.slow
def test_the_dq_transformer_trains_from_code_shards_on_ray(dq_codes, tmp_path):
    root = dq_codes[0]
    proc = subprocess.run([sys.executable, "-m", "rqscale.train", DQ_STAGE2, f"run.output_dir={tmp_path}", "train.max_steps=3",
                           "data.kind=webdataset", f"data.shards={root / 'codes' / 'manifest.json'}",
                           f"stage2.rqvae_checkpoint={root / 'dqvae.pt'}"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "debug-dq-stage2"
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 3 and (run_dir / "rqtransformer.pt").exists()
