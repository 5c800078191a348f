"""`python -m rqscale.sample --checkpoint PATH --num-samples N --out DIR [...]`: images from a trained
RQ-Transformer, decoded by its RQ-VAE.

Sampling flags not given take the checkpoint's own defaults (its config's stage2.sampling, which also drew
its run's picture). Writes DIR/grid.png, DIR/sample_00000.png ..., and DIR/samples.npz with `images` (uint8, N x H x W x 3),
`labels` (class labels; -1 for unconditional or text samples) and, for a text model, `captions` (each sample's).
Per-depth settings take one value for every depth or D values, e.g. `--top-k 512 256 128 64`.

A text-conditional model takes `--text "a caption"` (cycled over --num-samples) or `--captions FILE`: one
caption per line, one image per line in file order (blank lines are skipped); --num-samples may then be
omitted or must equal the number of captions. A caption longer than the model's text length is cut as
training cuts it, with a warning. `--rerank N --clip-model DIR` keeps, for each sample, the best of N
candidates of its caption by CLIP similarity (B.5 uses 16), scored by a local CLIP model.

A contextual checkpoint (stage2.model.kind=contextual) is decoded by Draft-and-Revise: --draft-steps,
--revise-steps, --revise-iterations and --draft-strategy override its stage2.sampling schedule; the
sampling flags above set the revise phase, and --draft-temperature / --draft-top-k / --draft-top-p /
--draft-cfg-scale the draft phase (by default plain sampling, supplement A.4). `--save-draft` also writes
the drafts (DIR/drafts/, same layout). `--inpaint IMAGE --mask MASK_PNG` keeps the picture outside the
mask's white region and fills that region (supplement D.3), --num-samples times.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from rqscale.data.text import read_caption_file
from rqscale.sampling.checkpoint import read_config
from rqscale.sampling.contextual_flags import add_draft_revise_args, draft_revise_flags
from rqscale.sampling.flags import add_sampling_args, sampling_fields
from rqscale.sampling.generate import cycled, sample
from rqscale.sampling.request import SampleRequest


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m rqscale.sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="rqtransformer.pt written by a stage-2 run")
    p.add_argument("--num-samples", type=int, help="how many samples (with --captions: omit, or the caption count)")
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--class-label", type=int, nargs="+", help="class labels, cycled over the samples")
    cond.add_argument("--text", help="caption for a text-conditional model")
    cond.add_argument("--captions", metavar="FILE", help="text-conditional model: one caption per line, one image each")
    add_sampling_args(p)
    p.add_argument("--classifier", help="TorchScript classifier for rejection sampling")
    p.add_argument("--acceptance-rate", type=float, default=1.0, help="fraction of candidates kept (with --classifier)")
    p.add_argument("--rerank", type=int, default=1, metavar="N",
                   help="text models: best of N candidates per sample by CLIP similarity (B.5 uses 16; needs --clip-model)")
    p.add_argument("--clip-model", help="local CLIP directory (transformers save_pretrained) that scores --rerank candidates")
    add_draft_revise_args(p)
    p.add_argument("--inpaint", metavar="IMAGE", help="contextual models: fill the --mask region of this picture (D.3)")
    p.add_argument("--mask", metavar="MASK_PNG", help="with --inpaint: a PNG of the picture's size, white where to fill")
    p.add_argument("--save-draft", action="store_true", help="contextual models: also write the drafts to OUT/drafts")
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


def captions_and_count(args: argparse.Namespace) -> tuple[tuple[str, ...], int]:
    """(captions, number of samples) the flags ask for."""
    if args.captions:
        captions = tuple(read_caption_file(args.captions))
        if args.num_samples not in (None, len(captions)):
            raise ValueError(f"--num-samples {args.num_samples} differs from the {len(captions)} captions in {args.captions}: "
                             "omit --num-samples to draw one image per caption")
        return captions, len(captions)
    if args.num_samples is None:
        raise ValueError("--num-samples is required (only --captions FILE implies it)")
    return (() if args.text is None else (args.text,)), args.num_samples


def request_of(args: argparse.Namespace) -> SampleRequest:
    """The request the flags describe; a bad value is a ValueError naming its flag, before anything loads."""
    captions, count = captions_and_count(args)
    return SampleRequest(args.checkpoint, count, class_labels=tuple(args.class_label or ()), captions=captions,
                         classifier=args.classifier, acceptance_rate=args.acceptance_rate, rerank=args.rerank,
                         clip_model=args.clip_model, draft_revise=draft_revise_flags(args), inpaint_image=args.inpaint,
                         inpaint_mask=args.mask, keep_drafts=args.save_draft, **sampling_fields(args))


def write_outputs(out: str, images: torch.Tensor, labels: np.ndarray, captions: tuple = ()) -> None:
    """The sample PNGs, a grid, and samples.npz (images, labels, and each sample's caption if any)."""
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
    text = {"captions": np.array(cycled(captions, len(pixels)))} if captions else {}
    np.savez(os.path.join(out, "samples.npz"), images=pixels, labels=labels, **text)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        captions_and_count(args)  # the caption flags first: nothing is read from the checkpoint for a bad request
        request = request_of(with_checkpoint_sampling(args))
        drafts = []
        images, labels = sample(request, drafts)
    except (ValueError, FileNotFoundError) as exc:
        print(f"rqscale.sample: error: {exc}", file=sys.stderr)
        return 2
    write_outputs(args.out, images, labels, request.captions)
    print(f"rqscale.sample: wrote {len(images)} samples to {args.out} (grid.png, samples.npz)")
    if drafts:
        write_outputs(os.path.join(args.out, "drafts"), torch.cat(drafts), labels, request.captions)
        print(f"rqscale.sample: wrote their drafts to {os.path.join(args.out, 'drafts')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
