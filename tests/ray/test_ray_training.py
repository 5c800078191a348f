"""The distributed trainer end to end: Ray Train V2 + DeepSpeed ZeRO-3 on 2 CPU workers (gloo)."""
import json
import re
import time

import pytest
import torch

from rqscale.config import load
from rqscale.data.pipeline import RankBatches
from rqscale.tasks import Stage2Task
from rqscale.train.stage2 import Stage2Trainer, load_rqvae
from tests.conftest import DEBUG_STAGE2
from tests.ray.conftest import (DETERMINISTIC, RANDOM, STEPS, assert_same_weights, copy_checkpoint, final_weights,
                                stage2_overrides, train_cli)

pytestmark = pytest.mark.slow


def plain_reference(rqvae_file: str, steps: int) -> dict:
    """The same global batches through the plain PyTorch step, in one process (micro = global batch)."""
    cfg = load(DEBUG_STAGE2, [f"stage2.rqvae_checkpoint={rqvae_file}", "train.global_batch=16", "train.micro_batch=16",
                              f"train.max_steps={steps}", "engine.precision=fp32", *DETERMINISTIC])
    torch.manual_seed(cfg.run.seed)  # what every rank does before building the model
    task = Stage2Task(cfg, load_rqvae(cfg))
    trainer = Stage2Trainer(task, cfg)
    data = RankBatches(cfg, 0, 1, 1)
    for step in range(steps):
        trainer.step(data.next_step(), step)
    return {k: v.detach().clone() for k, v in task.model.state_dict().items()}


def test_zero3_on_two_workers_matches_one_process(deterministic_run, rqvae_file):
    run_dir, log = deterministic_run
    reference = plain_reference(rqvae_file, STEPS)
    assert_same_weights(final_weights(run_dir), reference, atol=1e-5)
    summary = json.load(open(run_dir / "summary.json"))
    assert summary["workers"] == 2 and summary["steps"] == STEPS


def test_the_terminal_shows_rqscale_lines_only(deterministic_run):
    """By default (run.verbose=false) a person sees rqscale's progress and events, not Ray Train's
    per-rank report dumps, its controller's lines or DeepSpeed's and torch's output."""
    _, log = deterministic_run
    lines = [line for line in log.splitlines() if line.strip()]
    assert sum(line.startswith("step ") for line in lines) == STEPS  # train.log_every=1
    assert any(line.startswith("rqscale: worker group started: 2 workers on cpu") for line in lines)
    assert any(line.startswith("MFU against measured CPU") for line in lines)
    for noise in ("Reporting training result", "RayTrainWorker", "TrainController", "DeepSpeed", "Warning", "INFO"):
        assert noise not in log, noise
    others = [line for line in lines if not line.startswith(("step ", "rqscale: ", "MFU against"))]
    assert others == [], others


def test_killed_worker_is_restarted_and_resumes_exactly(random_run, rqvae_file, ray_runs):
    """SIGKILL rank 1 at step 3: Ray restarts the group from the step-2 checkpoint; the result equals
    the uninterrupted run (same data exactly once, restored RNG and optimizer state)."""
    proc = train_cli(*stage2_overrides(rqvae_file, ray_runs, "killed", *RANDOM, "train.max_failures=2"), kill_at="3:1")
    assert proc.returncode == 0, proc.stdout[-4000:]
    faults = [json.loads(line) for line in open(ray_runs / "killed" / "faults.jsonl")]
    assert [(f["step"], f["rank"]) for f in faults] == [(3, 1)]
    assert "resumed from step 2" in proc.stdout
    assert_same_weights(final_weights(ray_runs / "killed"), final_weights(random_run[0]), atol=1e-6)


def test_two_worker_checkpoint_resumes_on_one_worker(deterministic_run, rqvae_file, ray_runs):
    """Elastic 2 -> 1: the step-4 checkpoint of 2 ranks becomes a universal checkpoint; 1 worker
    continues with grad_accum 2 at the same global batch and lands on the 2-worker result."""
    copy_checkpoint(deterministic_run[0], ray_runs / "elastic", 4)
    overrides = stage2_overrides(rqvae_file, ray_runs, "elastic", *DETERMINISTIC)
    overrides = [o for o in overrides if not o.startswith("train.num_workers")] + ["train.num_workers=1", "train.micro_batch=8", "train.grad_accum=2"]
    proc = train_cli(*overrides)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "resumed from step 4 (universal, 1 workers)" in proc.stdout
    assert_same_weights(final_weights(ray_runs / "elastic"), final_weights(deterministic_run[0]), atol=1e-5)


def test_config_error_fails_before_ray_starts(rqvae_file, ray_runs):
    started = time.perf_counter()
    proc = train_cli(*stage2_overrides(str(ray_runs / "missing.pt"), ray_runs, "bad-config"))
    assert proc.returncode == 2
    assert "config key 'stage2.rqvae_checkpoint'" in proc.stdout and "missing.pt" in proc.stdout
    assert "Ray" not in proc.stdout and not (ray_runs / "bad-config").exists()
    assert time.perf_counter() - started < 60


def test_deterministic_worker_error_is_not_retried(rqvae_file, ray_runs):
    """Labels 0-9 for a 5-class model fail the same way on every attempt: the run stops at once
    with the error instead of spending train.max_failures restarts on it."""
    proc = train_cli(*stage2_overrides(rqvae_file, ray_runs, "bad-labels", "stage2.model.num_classes=5", "train.max_failures=3",
                                       "run.verbose=true"))  # verbose: Ray's own lines too
    assert proc.returncode == 1
    assert "error (not retried)" in proc.stdout and "stage2.model.num_classes" in proc.stdout
    starts = re.findall(r"pid=(\d+)\)\S* rqscale: worker group started", proc.stdout)
    assert len(set(starts)) == 1, starts  # one worker group (Ray may echo a line twice), no restart
    assert proc.stdout.count("Started training worker group") == 1  # the controller's line, shown when verbose
    # One line with the worker's own error and where its full traceback is; nothing left in storage.
    line = next(line for line in proc.stdout.splitlines() if line.startswith("rqscale: error (not retried): "))
    assert "ConfigError: config key 'stage2.model.num_classes': the data has labels 0..9" in line, line
    traceback_file = re.search(r"traceback: (\S+/error_rank\d+\.log)\]$", line).group(1)
    assert "ConfigError" in open(traceback_file).read()
    assert not (ray_runs / "bad-labels" / "rqscale_fatal.json").exists()


def test_deterministic_worker_error_on_a_shared_cluster_stops_ray_train(rqvae_file, ray_runs, tmp_path):
    """On a cluster the driver did not start (no ray.shutdown() to end the run), Ray Train's own
    controller must stop instead of retrying: one worker group, every actor of the run dead."""
    from tests.ray.local_cluster import LocalCluster

    cluster = LocalCluster(str(tmp_path), head_cpus=2).start()
    try:
        env = dict(cluster.client_env(), RAY_ADDRESS=cluster.gcs_address)  # a driver attached to the cluster
        proc = train_cli(*stage2_overrides(rqvae_file, ray_runs, "bad-labels-shared", "stage2.model.num_classes=5",
                                           "train.max_failures=3"), env=env)
        actors = json.loads(cluster.ray_cli("list", "actors", "--format", "json", "--limit", "200").stdout)
    finally:
        cluster.stop()
    assert proc.returncode == 1 and "error (not retried): ConfigError" in proc.stdout, proc.stdout[-4000:]
    assert proc.stdout.count("rqscale: worker group started") == 1, proc.stdout[-4000:]  # one group, no restart
    run_actors = [a for a in actors if a["class_name"] in ("TrainController", "RayTrainWorker", "FatalChannel")]
    assert sorted(a["class_name"] for a in run_actors) == ["FatalChannel", "RayTrainWorker", "RayTrainWorker", "TrainController"]
    assert all(a["state"] == "DEAD" for a in run_actors), run_actors
