"""Both stages on data_prep shards: from a local directory in this process (`rqscale.train.in_process.run`),
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
        from rqscale.train.in_process import run

        run(load(overrides[0], list(overrides[1:])), log=print)
        return subprocess.CompletedProcess([], 0, "", "")
    return subprocess.run([sys.executable, "-m", "rqscale.train", *overrides], capture_output=True, text=True, cwd=REPO, timeout=600)


@pytest.mark.slow
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


def damaged_digit_shards(out) -> str:
    """The demo digits as shards, then damaged the ways stored data gets damaged: a JPEG cut short
    before it was packed, and, after the manifest was written, bytes overwritten in one sample's tar
    header and the tail of another shard lost. 1 + 1 + 2 unreadable samples."""
    from data_prep.demo import digit_items
    from data_prep.shards import write_shards
    from rqscale.data.reader import load_shards

    def items():
        for i, item in enumerate(digit_items()):
            if i == 192:  # 12 global batches of 16: one epoch, nothing dropped
                return
            yield dict(item, jpg=item["jpg"][:120]) if i == 3 else item
    write_shards(items(), out, "damaged", max_samples=48)
    shards = load_shards(f"{out}/manifest.json")
    with open(f"{out}/shard-000001.tar", "r+b") as f:
        f.seek(shards[1].offsets[7])
        f.write(b"\xff" * 64)
    with open(f"{out}/shard-000002.tar", "r+b") as f:
        f.truncate(shards[2].offsets[46] + 5)
    return f"{out}/manifest.json"


@pytest.mark.slow
def test_skipped_samples_are_reported_in_progress_metrics_and_summary(tmp_path):
    import glob

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rqscale.config import load
    from rqscale.train.in_process import run

    lines = []
    cfg = load(DEBUG_STAGE1, [f"run.output_dir={tmp_path}", "run.name=damaged", f"data.shards={damaged_digit_shards(str(tmp_path / 'shards'))}",
                              "train.max_steps=12", "train.log_every=6", "train.global_batch=16", "train.micro_batch=16"])
    summary = run(cfg, log=lines.append)  # one epoch: every sample is met once
    assert summary["skipped_samples"] == 4
    assert sorted(e["key"] for e in summary["skipped_examples"]) == ["digit00003", "shard-000001.tar#7", "shard-000002.tar#46", "shard-000002.tar#47"]
    assert all(e["reason"] for e in summary["skipped_examples"])
    records = [json.loads(line) for line in open(tmp_path / "damaged" / "metrics.jsonl")]
    assert records[-1]["skipped_samples"] == 4 and records[0]["skipped_samples"] <= 4
    assert [r["skipped_samples"] for r in records] == sorted(r["skipped_samples"] for r in records)
    progress = [line for line in lines if line.startswith("step")]
    assert "skipped 4 samples" in progress[-1]
    events = EventAccumulator(glob.glob(str(tmp_path / "damaged" / "tensorboard"))[0])
    events.Reload()
    assert events.Scalars("data/skipped_samples")[-1].value == 4
