"""Both stages on data_prep shards: from a local directory in this process (`rqscale.train.loop.run`),
and from S3 through `python -m rqscale.train` (a Ray worker reading the loopback S3 server)."""
import json
import subprocess
import sys

import pytest

from data_prep.demo import build
from tests.conftest import DEBUG_STAGE1, DEBUG_STAGE2, REPO


def train(*overrides, in_process=False):
    if in_process:
        from rqscale.config import load
        from rqscale.train.loop import run

        run(load(overrides[0], list(overrides[1:])), log=print)
        return subprocess.CompletedProcess([], 0, "", "")
    return subprocess.run([sys.executable, "-m", "rqscale.train", *overrides], capture_output=True, text=True, cwd=REPO, timeout=600)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_both_stages_train_from_demo_shards(where, tmp_path, s3_bucket):
    out = str(tmp_path / "demo") if where == "local" else f"{s3_bucket}/demo-{tmp_path.name}"
    build(out)
    shards = f"data.shards={out}/digits/manifest.json"
    runs = f"run.output_dir={tmp_path / 'runs'}"
    local = where == "local"
    proc = train(DEBUG_STAGE1, runs, "run.name=s1", "data.kind=webdataset", shards, "train.max_steps=3", "stage1.loss.disc_start=1", in_process=local)
    assert proc.returncode == 0, proc.stderr
    summary = json.load(open(tmp_path / "runs" / "s1" / "summary.json"))
    assert summary["steps"] == 3 and summary["eval_mse_before"] > 0
    proc = train(DEBUG_STAGE2, runs, "run.name=s2", "data.kind=webdataset", shards, "train.max_steps=3",
                 f"stage2.rqvae_checkpoint={tmp_path / 'runs' / 's1' / 'rqvae.pt'}", in_process=local)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "runs" / "s2" / "samples.png").exists()


def test_shards_without_manifest_are_refused(tmp_path):
    proc = train(DEBUG_STAGE1, "data.kind=webdataset", f"data.shards={tmp_path}/shard-{{000..009}}.tar")
    assert proc.returncode == 2 and "config key 'data.shards'" in proc.stderr and "manifest.json" in proc.stderr
