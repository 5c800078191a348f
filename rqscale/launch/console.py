"""What the person who typed `python -m rqscale.train` sees: rqscale's own lines, not the framework's.

By default (run.verbose=false) Ray does not forward the workers' stdout and stderr to the driver
(`log_to_driver=False`): Ray Train's per-rank "Reporting training result ..." dumps, DeepSpeed's build
messages and torch's warnings stay in Ray's session logs (/tmp/ray/session_latest/logs) and in
<log dir>/error_rank<r>.log when a worker fails. Rank 0's rqscale lines (progress, resume, checkpoint
events) reach the driver through a ConsoleChannel actor instead, and the driver prints them.
With run.verbose=true everything is forwarded as Ray normally does, and the lines come that way.
"""
from __future__ import annotations

import threading
from typing import Callable, List, Optional

POLL_SECONDS = 0.2  # how long a printed line may lag behind the worker; display only, nothing waits on it


class ConsoleChannel:
    """Ray actor (one thread, so lines keep the order rank 0 wrote them in)."""

    def __init__(self):
        self._lines: List[str] = []

    def write(self, line: str) -> None:
        self._lines.append(line)

    def read(self, start: int) -> List[str]:
        """The lines from index `start` on."""
        return self._lines[start:]


def new_console():
    """A ConsoleChannel owned by this process (it dies with the driver). No CPU reserved."""
    import ray

    return ray.remote(num_cpus=0)(ConsoleChannel).remote()


def console_writer(console) -> Callable[[str], None]:
    """A worker's `log`: its lines go to the driver's console (fire and forget: a step never waits)."""
    def write(line: str) -> None:
        console.write.remote(line)
    return write


class ConsolePump:
    """A driver thread that prints the console's new lines with `log` until stopped (then drains it)."""

    def __init__(self, console, log: Callable[[str], None]):
        self.console, self.log, self.printed = console, log, 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "ConsolePump":
        self._thread = threading.Thread(target=self._pump, daemon=True, name="rqscale-console")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._print_new()  # the last lines written before the run ended

    def _pump(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self._print_new()

    def _print_new(self) -> None:
        import ray

        if not ray.is_initialized():
            return
        try:
            lines = ray.get(self.console.read.remote(self.printed), timeout=10)
        except Exception:  # the cluster is going away (fatal stop): nothing more to show
            return
        for line in lines:
            self.log(line)
        self.printed += len(lines)
