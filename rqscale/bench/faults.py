"""Fault injection for the recovery benchmark and the kill-and-resume tests, passed in as a step hook.

    python -m rqscale.bench.faults --kill-at STEP:RANK CONFIG [key=value ...]

is `python -m rqscale.train CONFIG [key=value ...]` with rank RANK SIGKILLed when it reaches step STEP
in an attempt that started from scratch (so the restarted, resumed attempt runs to the end). The kill
is recorded first in <log dir>/faults.jsonl with its time, from which the benchmark measures recovery.
The production loop knows nothing of this: the hook reaches the workers through
`rqscale.train.__main__.main(step_hook=...)` -> `launch` -> Ray Train's train_loop_config.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass(frozen=True)
class KillAtStep:
    """A step hook (rqscale.train.loop.StepHook). A plain module-level class: Ray pickles it to the
    workers by reference, and they import it from the installed rqscale."""

    step: int
    rank: int

    def __call__(self, *, step: int, rank: int, fresh: bool, log_dir: str) -> None:
        if fresh and step == self.step and rank == self.rank:
            os.makedirs(log_dir, exist_ok=True)
            with open(os.path.join(log_dir, "faults.jsonl"), "a") as f:
                f.write(json.dumps({"event": "sigkill", "step": step, "rank": rank, "time": time.time()}) + "\n")
            os.kill(os.getpid(), signal.SIGKILL)


def parse_kill_at(spec: str) -> KillAtStep:
    """"STEP:RANK" -> KillAtStep(STEP, RANK)."""
    try:
        step, rank = (int(part) for part in spec.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--kill-at takes STEP:RANK, e.g. 3:1, not '{spec}'") from None
    return KillAtStep(step, rank)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse --kill-at; everything else goes to `python -m rqscale.train` unchanged."""
    from rqscale.train.__main__ import main as train_main

    parser = argparse.ArgumentParser(prog="python -m rqscale.bench.faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kill-at", type=parse_kill_at, required=True, metavar="STEP:RANK")
    args, train_argv = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return train_main(train_argv, step_hook=args.kill_at)


if __name__ == "__main__":
    # Run through the imported module, not this __main__ copy: KillAtStep must be
    # rqscale.bench.faults.KillAtStep for the workers to unpickle it by reference.
    from rqscale.bench import faults

    sys.exit(faults.main())
