"""`python -m rqscale.plan CONFIG [key=value ...] [--nodes N] [--gpus-per-node G] [--gpu NAME] [--mfu F]
[--dataset-size N] [--json]`: what a config costs on a cluster, without running it.

Parameters (meta device), training FLOPs per image, memory per GPU for every ZeRO stage with and
without activation checkpointing, the micro-batch that fits, images/s and wall time at an assumed MFU,
and warnings naming the config key that fixes a problem. The work is in rqscale/planning/.
"""
from __future__ import annotations

import argparse
import json
import sys

from rqscale.config import ConfigError, load
from rqscale.planning import GPUS, Cluster, format_text, plan, stage1_params, stage2_params

__all__ = ["main", "plan", "stage1_params", "stage2_params"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rqscale.plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. engine.zero_stage=2")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--gpu", default="a100-80gb", choices=sorted(GPUS), help="default a100-80gb")
    p.add_argument("--mfu", type=float, default=0.5, help="assumed model FLOPs utilisation (default 0.5)")
    p.add_argument("--dataset-size", type=int, default=None, help="images per epoch (default: from data.shards)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _cluster(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Cluster:
    if args.nodes < 1 or args.gpus_per_node < 1:
        parser.error("--nodes and --gpus-per-node must be >= 1")
    if not 0 < args.mfu <= 1:
        parser.error(f"--mfu {args.mfu} is not in (0, 1]")
    if args.dataset_size is not None and args.dataset_size < 1:
        parser.error("--dataset-size must be >= 1")
    return Cluster(args.nodes, args.gpus_per_node, GPUS[args.gpu], args.mfu, args.dataset_size)


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_intermixed_args(argv)  # overrides may follow the options
    cluster = _cluster(parser, args)
    try:
        cfg = load(args.config, args.overrides, check_files=False)
    except ConfigError as exc:
        print(f"rqscale: config error: {exc}", file=sys.stderr)
        return 2
    report = plan(cfg, cluster)
    print(json.dumps(report) if args.json else format_text(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
