"""Evaluation chunks as Ray tasks: on the cluster this process is attached to (ray job submit sets
RAY_ADDRESS), or on a private local Ray started for the call.

At most `workers` chunks run at once. On a cluster with GPUs each task takes one GPU; worker
processes are kept between tasks (max_calls=0, where Ray's default for GPU tasks is 1), so the
checkpoint and the feature extractor a worker loaded serve all of its later chunks. Results are
handed to `consume` in job order whatever order they finish in (a result that finishes early waits
in memory for its turn), so what the driver accumulates does not depend on scheduling.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "TORCH_HOME", "HF_HOME", "RQSCALE_CACHE")


def run_chunks(fn: Callable, jobs: Sequence, workers: int, consume: Callable) -> None:
    """consume(fn(job)) for each job in order, each fn(job) a Ray task, at most `workers` in flight."""
    from rqscale.launch.pool import ray_for_tasks

    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    with ray_for_tasks(local_cpus=workers, env=env) as ray:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        remote = ray.remote(num_cpus=1, num_gpus=gpus, max_calls=0)(fn)
        _bounded(ray, remote, list(jobs), workers, consume)


def _bounded(ray, remote, jobs: list, workers: int, consume: Callable) -> None:
    waiting, pending, submitted, delivered = {}, {}, 0, 0
    while delivered < len(jobs):
        while submitted < len(jobs) and len(pending) < workers:
            pending[remote.remote(jobs[submitted])] = submitted
            submitted += 1
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            waiting[pending.pop(ref)] = ray.get(ref)
        while delivered in waiting:
            consume(waiting.pop(delivered))
            delivered += 1
