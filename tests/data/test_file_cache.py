"""s3:// weights through the node cache, against the loopback S3 server: one download per node however
many processes ask at once, a new entry when the object changes, a missing object named before Ray."""
import multiprocessing
import subprocess
import sys

import boto3
import pytest
import torch

from rqscale.data.file_cache import downloads, local_copy
from rqscale.train.stage1 import load_init_weights
from tests.conftest import DEBUG_STAGE2, REPO
from tests.data.conftest import s3_bucket  # noqa: F401  (the loopback S3 server fixture)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RQSCALE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def put(bucket_url: str, key: str, data: bytes) -> str:
    boto3.client("s3").put_object(Bucket=bucket_url[len("s3://"):], Key=key, Body=data)
    return f"{bucket_url}/{key}"


def _fetch(url: str, queue) -> None:
    queue.put(local_copy(url))


def test_one_download_per_node_for_concurrent_processes(s3_bucket, cache):  # noqa: F811
    url = put(s3_bucket, "weights/big.bin", bytes(range(256)) * 40_000)  # 10 MB: the processes overlap
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_fetch, args=(url, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    paths = {queue.get(timeout=120) for _ in procs}
    for p in procs:
        p.join(timeout=60)
    assert len(paths) == 1 and open(paths.pop(), "rb").read() == bytes(range(256)) * 40_000
    assert [d["url"] for d in downloads(str(cache))] == [url]
    local_copy(url)  # already cached: no second download
    assert len(downloads(str(cache))) == 1


def test_a_replaced_object_gets_a_fresh_entry(s3_bucket, cache):  # noqa: F811
    url = put(s3_bucket, "weights/changing.bin", b"first version")
    first = local_copy(url)
    put(s3_bucket, "weights/changing.bin", b"second version")
    second = local_copy(url)
    assert first != second and open(second, "rb").read() == b"second version"
    assert open(first, "rb").read() == b"first version" and len(downloads(str(cache))) == 2


def test_local_paths_pass_through_and_missing_objects_are_named(s3_bucket, cache, tmp_path):  # noqa: F811
    assert local_copy(str(tmp_path / "x.pt")) == str(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError, match="no object at 's3://rqscale-test/weights/absent.pt'"):
        local_copy(f"{s3_bucket}/weights/absent.pt")


def test_init_weights_load_from_s3(s3_bucket, cache):  # noqa: F811
    source = torch.nn.Linear(3, 2)
    path = cache.parent / "linear.pt"
    torch.save(source.state_dict(), path)
    url = put(s3_bucket, "weights/linear.pt", path.read_bytes())
    target = torch.nn.Linear(3, 2)
    load_init_weights(target, url, "stage2.rqvae_checkpoint")
    assert torch.equal(target.weight, source.weight)


def test_a_missing_s3_rqvae_is_a_config_error_before_ray_starts(s3_bucket, tmp_path):  # noqa: F811
    proc = subprocess.run([sys.executable, "-m", "rqscale.train", DEBUG_STAGE2, f"stage2.rqvae_checkpoint={s3_bucket}/runs/missing/rqvae.pt",
                           f"run.output_dir={tmp_path}/runs"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"config key 'stage2.rqvae_checkpoint': there is no object at '{s3_bucket}/runs/missing/rqvae.pt'" in proc.stderr
    assert "Traceback" not in proc.stderr and "Ray" not in proc.stdout + proc.stderr and not (tmp_path / "runs").exists()


def test_a_download_that_keeps_arriving_corrupt_is_one_clear_error_and_leaves_nothing(s3_bucket, cache, monkeypatch):  # noqa: F811
    import rqscale.data.file_cache as file_cache

    url = put(s3_bucket, "weights/flaky.bin", b"some weights")
    digests = iter(["0" * 32, "1" * 32, "2" * 32])  # what the received bytes hash to, three times wrong
    monkeypatch.setattr(file_cache, "_md5", lambda path: next(digests))
    with pytest.raises(file_cache.DownloadError, match="arrived corrupt 3 times"):
        local_copy(url)
    entry = next((cache / "weights").iterdir())
    assert sorted(p.name for p in entry.iterdir()) == ["flaky.bin.lock"] and downloads(str(cache)) == []
    monkeypatch.undo()
    monkeypatch.setenv("RQSCALE_CACHE", str(cache))
    assert open(local_copy(url), "rb").read() == b"some weights"  # a sound download then goes through
