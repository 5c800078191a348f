"""The command-line flags of a SampleRequest's sampling fields, shared by the CLIs that sample
(`python -m rqscale.sample`, `python -m rqscale.evaluate samples|clip`), so both spell them alike.
Per-depth settings take one value for every depth or D values, e.g. `--top-k 512 256 128 64`."""
from __future__ import annotations

import argparse

import torch

from rqscale.sampling.filters import SamplingParams


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, nargs="+", default=[1.0])
    p.add_argument("--top-k", type=int, nargs="+", default=[0])
    p.add_argument("--top-p", type=float, nargs="+", default=[1.0])
    p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def sampling_fields(args: argparse.Namespace) -> dict:
    """SampleRequest keyword arguments from the flags of add_sampling_args."""
    params = SamplingParams(tuple(args.temperature), tuple(args.top_k), tuple(args.top_p), args.cfg_scale)
    return {"params": params, "batch_size": args.batch_size, "seed": args.seed, "device": args.device}
