"""Checkpoints on S3 (a moto server on 127.0.0.1): a job that dies mid-run is submitted again under the
same run name and continues from the newest *complete* checkpoint; half-uploaded ones are skipped. The
RQ-VAE is read from S3 too: the node (this machine) downloads it once for both workers and both jobs."""
import boto3
import pytest

from rqscale.data.file_cache import downloads
from tests.data.conftest import s3_bucket  # noqa: F401  (the loopback S3 server fixture)
from tests.ray.conftest import RANDOM, assert_same_weights, final_weights, stage2_overrides, train_cli

pytestmark = pytest.mark.slow


def _keys(client, bucket: str, prefix: str) -> list:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def test_resubmitted_job_continues_from_latest_complete_checkpoint(s3_bucket, random_run, rqvae_file, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("RQSCALE_RUNS", str(tmp_path / "local-logs"))
    monkeypatch.setenv("RQSCALE_CACHE", str(tmp_path / "cache"))
    storage = f"{s3_bucket}/runs"
    client = boto3.client("s3")
    bucket, prefix = s3_bucket[len("s3://"):], "runs/s3-run/"
    client.upload_file(rqvae_file, bucket, "weights/rqvae.pt")
    overrides = stage2_overrides(f"{s3_bucket}/weights/rqvae.pt", storage, "s3-run", *RANDOM)
    # 1. The whole job dies at step 5 (rank 0 killed, no retries allowed): checkpoints 2 and 4 are in S3.
    first = train_cli(*overrides, "train.max_failures=0", kill_at="5:0")
    assert first.returncode != 0
    error_log = tmp_path / "local-logs" / "s3-run" / "error.log"  # an s3:// run's logs mirror locally
    assert "rqscale: training failed: " in first.stdout and f"[full traceback: {error_log}]" in first.stdout, first.stdout[-3000:]
    assert error_log.exists()
    keys = _keys(client, bucket, prefix)
    assert any(k.endswith("checkpoint_00000004/rqscale_complete.json") for k in keys), keys
    # 2. Damage what a crash mid-upload leaves: checkpoint 6 without its marker, and checkpoint 4
    #    missing a shard although its marker is there. Neither may be loaded.
    for key in [k for k in keys if "/checkpoint_00000004/" in k]:
        client.copy_object(Bucket=bucket, Key=key.replace("checkpoint_00000004", "checkpoint_00000006"), CopySource={"Bucket": bucket, "Key": key})
    client.delete_object(Bucket=bucket, Key=prefix + "checkpoint_00000006/rqscale_complete.json")
    shard = next(k for k in keys if "/checkpoint_00000004/engine/" in k and "zero_pp_rank_1" in k)
    client.delete_object(Bucket=bucket, Key=shard)
    # 3. Submitted again with the same name: resumes from step 2 and ends where the uninterrupted run did.
    second = train_cli(*overrides)
    assert second.returncode == 0, second.stdout[-4000:]
    assert "resumed from step 2" in second.stdout
    exported = tmp_path / "exported.pt"
    from rqscale.export import main as export_main

    assert export_main([f"{storage}/s3-run", "--out", str(exported)]) == 0
    import torch

    weights = torch.load(exported, map_location="cpu", weights_only=True)["rqtransformer"]
    assert_same_weights(weights, final_weights(random_run[0]), atol=1e-6)
    assert (tmp_path / "local-logs" / "s3-run" / "samples.png").exists()
    fetched = [d["url"] for d in downloads(str(tmp_path / "cache"))]
    assert fetched == [f"{s3_bucket}/weights/rqvae.pt"]  # 2 workers x 2 jobs (and the picture), one download
