"""Run independent jobs as Ray tasks: on the cluster this process is attached to (ray job submit),
or on a private local Ray started for the call."""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, Optional, Sequence


@contextlib.contextmanager
def ray_for_tasks(local_cpus: Optional[int] = None, env: Optional[dict] = None) -> Iterator:
    """The `ray` module, initialised: attached to RAY_ADDRESS's cluster when set, else a private local
    Ray with `local_cpus` CPUs; `env` goes to the workers. Shut down on exit only if started here."""
    import ray

    started = not ray.is_initialized()
    if started:
        attached = bool(os.environ.get("RAY_ADDRESS"))
        ray.init(address="auto" if attached else None, num_cpus=None if attached else local_cpus,
                 include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env} if env else None)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def map_tasks(fn: Callable, jobs: Sequence[tuple], num_cpus_per_task: float = 1.0, local_cpus: int | None = None) -> list:
    """[fn(*job) for job in jobs], each job a Ray task; results in job order."""
    with ray_for_tasks(local_cpus) as ray:
        remote = ray.remote(num_cpus=num_cpus_per_task)(fn)
        return ray.get([remote.remote(*job) for job in jobs])
