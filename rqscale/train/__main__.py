"""`python -m rqscale.train CONFIG [key=value ...]`: validate the config, then train on Ray Train.

A bad config prints one line naming the key and the fix, and exits with status 2 before Ray or any
worker starts. A deterministic error inside a worker stops the run at once (status 1), without retries.
Any failure prints one line with the error's type and message and where its full traceback is: the
worker's <log dir>/error_rank<r>.log, or <log dir>/error.log written here.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

from rqscale.config import ConfigError, load


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m rqscale.train", description=__doc__)
    parser.add_argument("config", help="YAML config (differences from the schema only)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=10")
    return parser.parse_args(argv)


def describe(summary: dict) -> list:
    """The few lines a person wants at the end of a run."""
    if summary["stage"] == "stage1":
        return [f"eval MSE {summary['eval_mse_before']:.4f} -> {summary['eval_mse_after']:.4f} ({summary['mse_reduction']:.1f}x); "
                f"MSE by depth {[round(m, 4) for m in summary['mse_by_depth']]}; codebook usage {summary['codebook_usage']:.3f}",
                f"reconstructions written to {summary['picture']}"]
    if "loss_parts_last_step" in summary:  # a DQ-Transformer
        parts = "; ".join(f"{k} {v:.3f}" for k, v in summary["loss_parts_last_step"].items() if v is not None)
    else:
        parts = f"by depth {[round(x, 3) for x in summary['loss_by_depth_last_step']]}"
    return [f"loss {summary['loss_first_step']:.3f} -> {summary['loss_last_step']:.3f}; {parts}",
            f"checkpoint written to {summary['checkpoint']}", f"samples written to {summary['picture']}"]


def main(argv: Optional[Sequence[str]] = None, *, step_hook: Optional[Callable] = None) -> int:
    """The CLI; `step_hook(step=, rank=, fresh=, log_dir=)` runs before each training step on every
    rank (fault injection: rqscale/bench/faults.py)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load(args.config, args.overrides)
    except ConfigError as exc:
        print(f"rqscale: config error: {exc}", file=sys.stderr)
        return 2
    from rqscale.launch.trainer import FatalRunError, launch  # heavy imports only after validation
    from rqscale.train.in_process import check_runnable, run_dir_of
    from rqscale.train.loop import log_dir_of

    try:
        check_runnable(cfg)
    except ConfigError as exc:
        print(f"rqscale: config error: {exc}", file=sys.stderr)
        return 2
    print(f"rqscale: training {cfg.stage} '{cfg.run.name}' on {cfg.train.num_workers} Ray workers -> {run_dir_of(cfg)}", flush=True)
    try:
        summary = launch(cfg, log=lambda line: print(line, flush=True), step_hook=step_hook)
    except FatalRunError as exc:  # the worker's one line already says where its traceback is
        print(f"rqscale: error (not retried): {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # Ray's TrainingFailedError after train.max_failures restarts, and the like
        print(f"rqscale: training failed: {failure_line(exc, log_dir_of(cfg))}", file=sys.stderr)
        return 1
    for line in describe(summary):
        print(f"rqscale: {line}")
    return 0


def failure_line(exc: BaseException, log_dir: str) -> str:
    """The root cause on one line, and the file (<log dir>/error.log) that has the full traceback:
    Ray's wrapper included, whose text holds every failed worker's own traceback."""
    from rqscale.launch.failures import one_line, root_cause, write_traceback

    where = write_traceback(log_dir, "error.log", exc)
    return f"{one_line(root_cause(exc))} [full traceback: {where}]"


if __name__ == "__main__":
    sys.exit(main())
