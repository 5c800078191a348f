"""`python -m rqscale.sample --checkpoint PATH --num-samples N --out DIR [...]`: images from a trained
RQ-Transformer, decoded by its RQ-VAE.

Sampling flags not given take the checkpoint's own defaults (its config's stage2.sampling, which also drew
its run's picture). Writes DIR/grid.png, DIR/sample_00000.png ..., and DIR/samples.npz with `images` (uint8, N x H x W x 3)
and `labels` (class labels; -1 for unconditional or text samples). Per-depth settings take one value
for every depth or D values, e.g. `--top-k 512 256 128 64`.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from rqscale.sampling.checkpoint import read_config
from rqscale.sampling.flags import add_sampling_args, sampling_fields
from rqscale.sampling.generate import sample
from rqscale.sampling.request import SampleRequest


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m rqscale.sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="rqtransformer.pt written by a stage-2 run")
    p.add_argument("--num-samples", type=int, required=True)
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--class-label", type=int, nargs="+", help="class labels, cycled over the samples")
    cond.add_argument("--text", help="caption for a text-conditional model")
    add_sampling_args(p)
    p.add_argument("--classifier", help="TorchScript classifier for rejection sampling")
    p.add_argument("--acceptance-rate", type=float, default=1.0, help="fraction of candidates kept (with --classifier)")
    p.add_argument("--out", required=True)
    p.set_defaults(temperature=None, top_k=None, top_p=None, cfg_scale=None)  # unset: the checkpoint's stage2.sampling
    return p.parse_args(argv)


def with_checkpoint_sampling(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the sampling flags not given from the checkpoint's stage2.sampling: the settings its run's
    picture was drawn with (the training config chose them for that model)."""
    unset = [k for k in ("temperature", "top_k", "top_p", "cfg_scale") if getattr(args, k) is None]
    if unset:
        sp = read_config(args.checkpoint).stage2.sampling
        chosen = {"temperature": [sp.temperature], "top_k": [sp.top_k], "top_p": [sp.top_p], "cfg_scale": sp.cfg_scale}
        args = argparse.Namespace(**{**vars(args), **{k: chosen[k] for k in unset}})
    return args


def request_of(args: argparse.Namespace) -> SampleRequest:
    """The request the flags describe; a bad value is a ValueError naming its flag, before anything loads."""
    return SampleRequest(args.checkpoint, args.num_samples, class_labels=tuple(args.class_label or ()),
                         captions=() if args.text is None else (args.text,), classifier=args.classifier,
                         acceptance_rate=args.acceptance_rate, **sampling_fields(args))


def write_outputs(out: str, images: torch.Tensor, labels: np.ndarray) -> None:
    from PIL import Image

    from rqscale.utils.images import save_grid, to_uint8

    os.makedirs(out, exist_ok=True)
    pixels = to_uint8(images)
    for i, pixel in enumerate(pixels):
        Image.fromarray(pixel).save(os.path.join(out, f"sample_{i:05d}.png"))
    per_row = int(np.ceil(np.sqrt(len(pixels))))
    rows = [images[i : i + per_row] for i in range(0, len(images), per_row)]
    if len(rows) > 1 and len(rows[-1]) < per_row:  # pad the last row with white tiles
        rows[-1] = torch.cat([rows[-1], torch.ones(per_row - len(rows[-1]), *images.shape[1:])])
    save_grid(rows, os.path.join(out, "grid.png"))
    np.savez(os.path.join(out, "samples.npz"), images=pixels, labels=labels)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        images, labels = sample(request_of(with_checkpoint_sampling(args)))
    except (ValueError, FileNotFoundError) as exc:
        print(f"rqscale.sample: error: {exc}", file=sys.stderr)
        return 2
    write_outputs(args.out, images, labels)
    print(f"rqscale.sample: wrote {len(images)} samples to {args.out} (grid.png, samples.npz)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
