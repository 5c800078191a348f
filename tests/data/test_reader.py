"""Sharded reader: coverage across ranks and loader workers, exact resume (also 2 -> 1 ranks),
corrupt samples and truncated shards, and the same stream from S3."""
import os

import pytest
import torch

from data_prep.demo import digit_items
from data_prep.shards import write_shards
from rqscale.data.reader import BadDataError, ResumableLoader, load_shards
from rqscale.data.storage import join

GLOBAL_BATCH = 16


def first_digits(n: int):
    for i, item in enumerate(digit_items()):
        if i == n:
            return
        yield item


@pytest.fixture(scope="module")
def digit_shards(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shards"))
    write_shards(first_digits(200), out, "digits", max_samples=30)  # 7 shards, the last one short
    return load_shards(join(out, "manifest.json"))


def loader(shards, rank=0, world=1, workers=0, **kw):
    return ResumableLoader(shards, GLOBAL_BATCH, rank, world, seed=7, resolution=32, loader_workers=workers, **kw)


def keys_of(batches) -> list:
    return [k for b in batches for k in b["keys"]]


def test_two_ranks_two_workers_cover_the_epoch_once(digit_shards):
    per_rank = [keys_of(loader(digit_shards, r, 2, workers=2).epoch_batches()) for r in range(2)]
    assert not set(per_rank[0]) & set(per_rank[1])
    everything = per_rank[0] + per_rank[1]
    assert len(everything) == len(set(everything)) == 200


def test_resume_with_fewer_ranks_continues_the_same_global_batches(digit_shards):
    ranks = [list(loader(digit_shards, r, 2).epoch_batches()) for r in range(2)]
    uninterrupted = [ranks[0][g]["keys"] + ranks[1][g]["keys"] for g in range(len(ranks[0]))]
    k = 5
    first = [loader(digit_shards, r, 2) for r in range(2)]
    seen = []
    for r, part in enumerate(first):
        it = part.epoch_batches()
        seen += keys_of(next(it) for _ in range(k))
    state = first[0].state_dict()
    assert state == first[1].state_dict() == {"epoch": 0, "next_batch": k, "bad_samples": 0, "bad_samples_total": 0, "bad_examples": []}
    single = loader(digit_shards, 0, 1)
    single.load_state_dict(state)
    rest = list(single.epoch_batches())
    assert [b["keys"] for b in rest] == uninterrupted[k:]  # identical next global batches
    assert sorted(seen + keys_of(rest)) == sorted(keys_of(b for r in ranks for b in r))  # one epoch exactly
    assert single.state_dict() == {"epoch": 1, "next_batch": 0, "bad_samples": 0, "bad_samples_total": 0, "bad_examples": []}


def test_resume_reproduces_augmentation(digit_shards):
    full = list(loader(digit_shards).epoch_batches())
    part = loader(digit_shards)
    it = part.epoch_batches()
    next(it), next(it)
    again = loader(digit_shards)
    again.load_state_dict(part.state_dict())
    assert torch.equal(next(again.epoch_batches())["images"], full[2]["images"])


def test_hflip_off_keeps_training_images_unmirrored(digit_shards):
    """data.hflip=false (the demo's digits): training batches are the evaluation decode, never mirrored;
    with it on, some images are the mirror of their evaluation decode (digits are square: no crop slack)."""
    plain = next(loader(digit_shards, train=False).epoch_batches())["images"]
    unflipped = next(loader(digit_shards, flip=False).epoch_batches())["images"]
    flipped = next(loader(digit_shards).epoch_batches())["images"]
    assert torch.equal(unflipped, plain)
    mirrored = [torch.equal(f, p.flip(-1)) and not torch.equal(f, p) for f, p in zip(flipped, plain)]
    assert 0 < sum(mirrored) < len(mirrored)


def test_order_depends_on_seed_and_epoch(digit_shards):
    a = loader(digit_shards)
    epoch0, epoch1 = keys_of(a.epoch_batches()), keys_of(a.epoch_batches())
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1
    assert keys_of(loader(digit_shards).epoch_batches()) == epoch0


def corrupt_items():
    for i, item in enumerate(first_digits(40)):
        if i == 3:
            item = dict(item, jpg=item["jpg"][:100])  # a truncated JPEG that made it into a shard
        yield item


def test_corrupt_samples_and_truncated_shards_are_skipped_and_counted(tmp_path):
    write_shards(corrupt_items(), str(tmp_path), "bad", max_samples=10)
    shards = load_shards(str(tmp_path / "manifest.json"))
    last = tmp_path / "shard-000003.tar"
    last.write_bytes(last.read_bytes()[: shards[3].offsets[6] + 700])  # cut inside sample 6 of the last shard
    ok = loader(shards, max_bad_samples=10)
    keys = keys_of(ok.epoch_batches())
    assert ok.state_dict()["bad_samples_total"] == 1 + 4  # the bad JPEG, and samples 6..9 of the cut shard
    keys_again = keys_of(ok.epoch_batches())  # the budget is per epoch: a second epoch does not trip it
    assert sorted(keys_again) == sorted(keys) and ok.state_dict()["bad_samples_total"] == 10
    assert len(keys) == 35 and "digit00003" not in keys
    strict = loader(shards, max_bad_samples=2)
    with pytest.raises(BadDataError, match="data.max_bad_samples=2"):
        list(strict.epoch_batches())


def bad_data_items():
    """Each kind of bad data the reader must skip and count, among good digits."""
    for i, item in enumerate(first_digits(20)):
        if i == 2:
            item = dict(item, jpg=b"not an image at all" * 20)  # PIL: UnidentifiedImageError
        elif i == 5:
            item = dict(item, jpg=item["jpg"][: len(item["jpg"]) // 2])  # torchvision's libjpeg: truncated
        elif i == 7:
            item = {k: v for k, v in item.items() if k != "jpg"}  # no image field at all
        elif i == 9:
            item = dict(item, cls="seven")  # a label that is not an integer
        elif i == 11:
            item = dict(item, txt=b"\xff\xfe caption")  # a caption that is not UTF-8
        yield item


@pytest.fixture(scope="module")
def bad_data_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("bad-data")
    write_shards(bad_data_items(), str(out), "bad", max_samples=10)
    return load_shards(str(out / "manifest.json"))


def test_each_kind_of_bad_data_is_skipped_and_counted(bad_data_shards):
    ok = loader(bad_data_shards, max_bad_samples=5)
    keys = keys_of(ok.epoch_batches())
    assert ok.state_dict()["bad_samples_total"] == 5
    assert sorted(keys) == sorted(f"digit{i:05d}" for i in range(20) if i not in (2, 5, 7, 9, 11))
    examples = dict(ok.state_dict()["bad_examples"])  # the first five, named, with their reasons
    assert sorted(examples) == [f"digit{i:05d}" for i in (2, 5, 7, 9, 11)]
    assert "image does not decode" in examples["digit00002"] and "no 'jpg' field" in examples["digit00007"]
    assert "not an integer" in examples["digit00009"] and "not UTF-8" in examples["digit00011"]
    with pytest.raises(BadDataError, match="over the budget data.max_bad_samples=4 .latest: sample digit"):
        list(loader(bad_data_shards, max_bad_samples=4).epoch_batches())


@pytest.mark.parametrize("bug", [TypeError("a bug in rqscale"), AttributeError("a bug in rqscale"),
                                 RuntimeError("a tensor bug in rqscale's crop")])
def test_a_bug_in_decoding_propagates_instead_of_counting_as_bad_data(digit_shards, monkeypatch, bug):
    """Only the image decoders' own errors count as bad data: the same types raised by rqscale are bugs."""
    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr("rqscale.data.reader.decode_image_uint8", broken)
    broken_loader = loader(digit_shards, max_bad_samples=1000)
    with pytest.raises(type(bug), match="a (tensor )?bug in rqscale"):
        next(broken_loader.epoch_batches())
    assert broken_loader.state_dict()["bad_samples_total"] == 0


def test_labels_outside_num_classes_are_a_config_error(digit_shards):
    """Digits have labels 0..9: a 5-class model cannot hold them. Checked on the host while reading."""
    from rqscale.config import ConfigError

    with pytest.raises(ConfigError, match="stage2.model.num_classes.*labels 0..9 but the model has classes 0..4"):
        list(loader(digit_shards, num_classes=5).epoch_batches())
    assert len(keys_of(loader(digit_shards, num_classes=10).epoch_batches())) == 200


def test_bundled_labels_outside_num_classes_are_a_config_error():
    from rqscale.config import ConfigError, load
    from rqscale.data.pipeline import RankBatches
    from tests.conftest import DEBUG_STAGE2

    cfg = load(DEBUG_STAGE2, ["stage2.model.num_classes=5"], check_files=False)
    with pytest.raises(ConfigError, match="config key 'stage2.model.num_classes': the data has labels 0..9"):
        RankBatches(cfg, 0, 1, 1)


def test_same_stream_from_s3(digit_shards, s3_bucket, tmp_path):
    out = f"{s3_bucket}/reader"
    write_shards(first_digits(200), out, "digits", max_samples=30)
    remote = load_shards(join(out, "manifest.json"))
    local_batches = list(loader(digit_shards).epoch_batches())
    remote_batches = list(loader(remote).epoch_batches())
    assert [b["keys"] for b in remote_batches] == [b["keys"] for b in local_batches]
    assert torch.equal(remote_batches[0]["images"], local_batches[0]["images"])


def test_reads_survive_an_s3_outage(s3_bucket, tmp_path):
    """The S3 endpoint goes away and comes back on the same port: reads retry instead of failing."""
    import os
    import threading
    import time

    from moto.server import ThreadedMotoServer

    from tests.data.conftest import _free_port

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    old = os.environ["AWS_ENDPOINT_URL"]
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
    try:
        import boto3

        boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="flaky")
        write_shards(first_digits(40), "s3://flaky/d", "digits", max_samples=20)
        shards = load_shards("s3://flaky/d/manifest.json")
        server.stop()  # outage; moto keeps its objects in this process
        replacement = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
        threading.Timer(1.5, replacement.start).start()
        start = time.perf_counter()
        keys = keys_of(loader(shards).epoch_batches())
        assert sorted(keys) == sorted(f"digit{i:05d}" for i in range(40))
        assert time.perf_counter() - start > 1.0  # it did wait for the endpoint to return
        replacement.stop()
    finally:
        os.environ["AWS_ENDPOINT_URL"] = old


def test_damaged_tar_headers_and_cut_shards_cost_only_the_samples_they_touch(tmp_path):
    """Damage as storage does it, after the manifest was written: bytes overwritten inside one sample's
    tar header, and a shard file cut short. Each loses exactly the samples it covers, named by place."""
    write_shards(first_digits(40), str(tmp_path), "bad", max_samples=10)
    shards = load_shards(str(tmp_path / "manifest.json"))
    damaged = tmp_path / "shard-000001.tar"
    data = bytearray(damaged.read_bytes())
    data[shards[1].offsets[4]:shards[1].offsets[4] + 100] = b"\xff" * 100  # sample 4's header: name and checksum
    damaged.write_bytes(bytes(data))
    cut = tmp_path / "shard-000002.tar"
    cut.write_bytes(cut.read_bytes()[: shards[2].offsets[8] + 10])  # samples 8 and 9 are gone
    ok = loader(shards, max_bad_samples=10)
    keys = keys_of(ok.epoch_batches())
    assert len(keys) == 37 and ok.state_dict()["bad_samples_total"] == 3
    assert sorted(k for k, _ in ok.state_dict()["bad_examples"]) == ["shard-000001.tar#4", "shard-000002.tar#8", "shard-000002.tar#9"]
    assert {"digit00014", "digit00028", "digit00029"}.isdisjoint(keys) and "digit00015" in keys


def test_reading_leaves_torch_s_global_rng_alone(digit_shards):
    """Training draws dropout and stochastic codes from torch's global RNG, which a checkpoint saves. If
    starting an epoch's iterator drew from it (a DataLoader's base seed), a resumed run, which starts one
    at another point of the stream, would continue with other random numbers than an uninterrupted run."""
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    next(loader(digit_shards).epoch_batches())
    assert torch.equal(torch.rand(4), expected)
