"""`python -m rqscale.train CONFIG [key=value ...]`: validate the config, then train on Ray Train.

A bad config prints one line naming the key and the fix, and exits with status 2 before Ray or any
worker starts. A deterministic error inside a worker stops the run at once (status 1), without retries.
"""
from __future__ import annotations

import argparse
import sys

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
    return [f"loss {summary['loss_first_step']:.3f} -> {summary['loss_last_step']:.3f}; by depth "
            f"{[round(x, 3) for x in summary['loss_by_depth_last_step']]}",
            f"checkpoint written to {summary['checkpoint']}", f"samples written to {summary['picture']}"]


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load(args.config, args.overrides)
    except ConfigError as exc:
        print(f"rqscale: config error: {exc}", file=sys.stderr)
        return 2
    from rqscale.launch.trainer import FatalRunError, launch  # heavy imports only after validation
    from rqscale.train.loop import check_runnable, run_dir_of

    try:
        check_runnable(cfg)
    except ConfigError as exc:
        print(f"rqscale: config error: {exc}", file=sys.stderr)
        return 2
    print(f"rqscale: training {cfg.stage} '{cfg.run.name}' on {cfg.train.num_workers} Ray workers -> {run_dir_of(cfg)}", flush=True)
    try:
        summary = launch(cfg, log=lambda line: print(line, flush=True))
    except FatalRunError as exc:
        print(f"rqscale: error (not retried): {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # Ray's TrainingFailedError after train.max_failures restarts, and the like
        print(f"rqscale: training failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for line in describe(summary):
        print(f"rqscale: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
