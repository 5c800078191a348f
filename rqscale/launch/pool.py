"""Run independent jobs as Ray tasks: on the cluster this process is attached to (ray job submit),
or on a private local Ray started for the call."""
from __future__ import annotations

from typing import Callable, Sequence


def map_tasks(fn: Callable, jobs: Sequence[tuple], num_cpus_per_task: float = 1.0, local_cpus: int | None = None) -> list:
    """[fn(*job) for job in jobs], each job a Ray task; results in job order."""
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(address="auto" if _cluster_available() else None, num_cpus=None if _cluster_available() else local_cpus,
                 include_dashboard=False, log_to_driver=False)
        started = True
    try:
        remote = ray.remote(num_cpus=num_cpus_per_task)(fn)
        return ray.get([remote.remote(*job) for job in jobs])
    finally:
        if started:
            ray.shutdown()


def _cluster_available() -> bool:
    import os

    return bool(os.environ.get("RAY_ADDRESS"))
