"""How a failed run is stopped and reported: fail fast on errors retrying cannot fix, and keep every traceback.

A worker that hits a deterministic error (bad data, labels the config cannot hold, repeated non-finite
losses, a missing file) does, in this order:

  1. writes its traceback to <log dir>/error_rank<r>.log;
  2. ray.get(channel.report.remote(message)): the driver's FatalChannel actor records the message;
  3. raises FatalRunError(message).

Step 2 returns only once the record is made, so whatever reacts to the raise in step 3 finds it:

  - Ray Train's controller polls the workers, sees the error and calls StopOnFatal (a Ray Train
    callback) before it decides whether to retry; StopOnFatal raises, which Ray Train treats as a
    controller failure and does not retry (ray/train/v2/.../failure_handling/default.py): no new
    worker group starts, and trainer.fit() raises.
  - Should a worker group start anyway (a Ray release that ignored callback errors), train_fn asks
    the channel first (`raise_if_fatal`) and raises again without training: the restart is harmless.
  - The driver is blocked in channel.wait(), which returns on the record; it raises FatalRunError at
    once and stops the run (ray.shutdown() for its private cluster).

Nothing waits for time to pass: every step is ordered by a Ray call returning. The old marker file in
storage (rqscale_fatal.json, which the driver polled while the failing worker slept 15 s) is gone: the
driver is always the process that called `launch` (also under `ray job submit`, whose entrypoint runs
`python -m rqscale.train` on the cluster), and the channel actor lives exactly as long as that process.
"""
from __future__ import annotations

import os
import threading
import time
import traceback
from typing import Optional


class FatalRunError(RuntimeError):
    """A worker hit an error that retrying cannot fix; the message is the worker's (type, text, rank,
    where its traceback was written). One string argument, so it pickles across Ray."""


class FatalChannel:
    """Ray actor (threaded: `wait` blocks one thread while workers report). Created by the driver per
    launch, so a resubmitted run starts with no record."""

    def __init__(self):
        self._lock = threading.Lock()
        self._error: Optional[str] = None
        self._wake = threading.Event()

    def report(self, error: str) -> None:
        """A worker's deterministic error; the first one is kept (ranks often fail the same way)."""
        with self._lock:
            if self._error is None:
                self._error = error
        self._wake.set()

    def error(self) -> Optional[str]:
        return self._error

    def finish(self) -> None:
        """trainer.fit() returned or raised: wake the driver."""
        self._wake.set()

    def wait(self) -> Optional[str]:
        """Block until a report or finish(); the reported error, if any."""
        self._wake.wait()
        return self._error


def new_channel():
    """A FatalChannel actor owned by this process (it dies with the driver). No CPU reserved."""
    import ray

    return ray.remote(num_cpus=0, max_concurrency=8)(FatalChannel).remote()


def raise_if_fatal(channel) -> None:
    """Called first in every worker: after a fatal report, a (re)started worker group does nothing."""
    import ray

    error = ray.get(channel.error.remote())
    if error is not None:
        raise FatalRunError(error)


def report_fatal(channel, message: str) -> None:
    """Record the error with the driver; returns once it is recorded (see the module docstring)."""
    import ray

    try:
        ray.get(channel.report.remote(message))
    except ray.exceptions.RayActorError:
        pass  # the driver is gone, and the run with it; the worker still raises the error itself


def stop_on_fatal():
    """A Ray Train callback (RunConfig(callbacks=...)) that ends the run instead of retrying it when a
    worker raised FatalRunError. Built here rather than at module level: importing ray.train decides
    between Train V1 and V2 (RAY_TRAIN_V2_ENABLED, which `launch` sets first)."""
    from ray.train import UserCallback

    class StopOnFatal(UserCallback):
        def after_exception(self, run_context, worker_exceptions: dict) -> None:
            for error in worker_exceptions.values():
                if isinstance(error, FatalRunError):
                    raise error  # the controller does not retry its own failures

    return StopOnFatal()


# ---- what a person sees -------------------------------------------------------------------------

def root_cause(exc: BaseException) -> BaseException:
    """The worker's own exception inside Ray Train's wrappers (WorkerGroupError's lowest failed rank,
    ControllerError's failure, a task error's cause), or exc itself."""
    failures = getattr(exc, "worker_failures", None)
    if failures:
        return root_cause(failures[min(failures)])
    for attribute in ("controller_failure", "_base_exc", "cause"):
        inner = getattr(exc, attribute, None)
        if isinstance(inner, BaseException) and inner is not exc:
            return root_cause(inner)
    return exc


def one_line(exc: BaseException) -> str:
    """`Type: message` on one line; a multi-line message keeps its first line (the file has the rest)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] + (" ..." if len(lines) > 1 else "") if lines else "(no message)"
    return f"{type(exc).__name__}: {text}"


def write_traceback(directory: str, name: str, exc: BaseException) -> str:
    """Append exc's full traceback to <directory>/<name>, under a time stamp; return the file's path.
    Appended, so a run that failed, restarted and failed again keeps every attempt's traceback. A file
    that cannot be written is said so in the returned text: it must not hide the error being reported."""
    path = os.path.abspath(os.path.join(directory, name))
    try:
        os.makedirs(directory, exist_ok=True)
        with open(path, "a") as f:
            f.write(f"---- {time.strftime('%Y-%m-%d %H:%M:%S')} (pid {os.getpid()})\n")
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    except OSError as error:
        return f"{path} could not be written ({error.strerror or error})"
    return path
