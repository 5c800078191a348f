"""`python -m rqscale.sample --checkpoint PATH --num-samples N --out DIR [...]`: images from a trained
RQ-Transformer, decoded by its RQ-VAE.

Writes DIR/grid.png, DIR/sample_00000.png ..., and DIR/samples.npz with `images` (uint8, N x H x W x 3)
and `labels` (class labels; -1 for unconditional or text samples). Per-depth settings take one value
for every depth or D values, e.g. `--top-k 512 256 128 64`.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch


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
    return p.parse_args(argv)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """The sampling flags shared with `python -m rqscale.evaluate`."""
    p.add_argument("--temperature", type=float, nargs="+", default=[1.0])
    p.add_argument("--top-k", type=int, nargs="+", default=[0])
    p.add_argument("--top-p", type=float, nargs="+", default=[1.0])
    p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def check_args(args) -> None:
    """Argument errors that need no checkpoint, raised before anything is loaded."""
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    check_sampling_args(args)
    if not 0.0 < args.acceptance_rate <= 1.0:
        raise ValueError(f"--acceptance-rate must be in (0, 1], got {args.acceptance_rate}")
    if args.acceptance_rate < 1.0 and not args.classifier:
        raise ValueError("--acceptance-rate below 1 needs --classifier PATH")


def check_sampling_args(args) -> None:
    """Errors in the flags of add_sampling_args."""
    if any(not 0.0 < p <= 1.0 for p in args.top_p):
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    if any(k < 0 for k in args.top_k):
        raise ValueError(f"--top-k must be >= 0, got {args.top_k}")
    if any(t <= 0 for t in args.temperature):
        raise ValueError(f"--temperature must be > 0, got {args.temperature}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")


def check_model_args(args, cfg) -> None:
    """Argument errors that depend on what the checkpoint's model can do."""
    m = cfg.stage2.model
    if args.classifier and m.condition != "class":
        raise ValueError("--classifier (rejection sampling) needs a class-conditional model: it keeps the samples "
                         "the classifier finds most likely to be their class")
    if args.cfg_scale != 1.0 and m.cond_dropout == 0:
        raise ValueError("--cfg-scale needs a model trained with stage2.model.cond_dropout > 0: this one never "
                         "learned its null condition")


def one_or_all(values: list):
    return values[0] if len(values) == 1 else values


def conditions(args, cfg, count: int, device):
    """(cond tensor or None, labels array) for `count` samples, checked against the model."""
    kind, m = cfg.stage2.model.condition, cfg.stage2.model
    if kind == "class":
        if not args.class_label:
            raise ValueError("this model is class-conditional: pass --class-label L [L ...]")
        bad = [c for c in args.class_label if not 0 <= c < m.num_classes]
        if bad:
            raise ValueError(f"unknown class label(s) {bad}: this model has classes 0..{m.num_classes - 1}")
        labels = torch.tensor(args.class_label).repeat((count + len(args.class_label) - 1) // len(args.class_label))[:count]
        return labels.to(device), labels.numpy()
    if kind == "text":
        if args.text is None:
            raise ValueError("this model is text-conditional: pass --text \"...\"")
        if not cfg.stage2.tokenizer:
            raise ValueError("the checkpoint's config names no tokenizer (stage2.tokenizer)")
        from rqscale.data.text import CaptionTokenizer

        tokens = CaptionTokenizer(cfg.stage2.tokenizer, m.text_length).encode(args.text)
        return tokens.to(device).expand(count, -1), np.full(count, -1)
    if args.class_label or args.text:
        raise ValueError("this model is unconditional: drop --class-label / --text")
    return None, np.full(count, -1)


def sampling_params(args, model):
    from rqscale.sampling import SamplingParams

    params = SamplingParams(one_or_all(args.temperature), one_or_all(args.top_k), one_or_all(args.top_p), args.cfg_scale)
    return params.resolve(model.depth_codes, model.num_codes)


@torch.no_grad()
def sample_images(cfg, rqvae, model, params, cond, count: int, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """`count` decoded images (float in [-1, 1], N x 3 x H x W, on the CPU), `batch_size` at a time."""
    from rqscale.sampling import sample_codes

    images = []
    for start in range(0, count, batch_size):
        n = min(batch_size, count - start)
        c = None if cond is None else cond[start : start + n]
        codes = sample_codes(model, n, c, params, gen)
        images.append(rqvae.decode_codes(codes.view(n, *cfg.rqvae.code_shape)).clamp(-1, 1).cpu())
    return torch.cat(images)


def generate(args, cfg, rqvae, model, count: int) -> tuple:
    params = sampling_params(args, model)
    cond, labels = conditions(args, cfg, count, args.device)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    return sample_images(cfg, rqvae, model, params, cond, count, args.batch_size, gen), labels


def reject(args, images, labels):
    from rqscale.sampling.rejection import load_classifier, select

    wanted = {int(l): int(c) for l, c in zip(*np.unique(labels[: args.num_samples], return_counts=True))}
    keep = select(images, torch.from_numpy(labels), load_classifier(args.classifier), wanted)
    return images[keep], labels[keep.numpy()]


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
        check_args(args)
        from rqscale.sampling.checkpoint import load_consolidated
        from rqscale.sampling.rejection import candidates_needed

        cfg, rqvae, model = load_consolidated(args.checkpoint, args.device)
        check_model_args(args, cfg)
        count = candidates_needed(args.num_samples, args.acceptance_rate) if args.classifier else args.num_samples
        images, labels = generate(args, cfg, rqvae, model, count)
        if args.classifier:
            images, labels = reject(args, images, labels)
    except (ValueError, FileNotFoundError) as exc:
        print(f"rqscale.sample: error: {exc}", file=sys.stderr)
        return 2
    write_outputs(args.out, images, labels)
    print(f"rqscale.sample: wrote {len(images)} samples to {args.out} (grid.png, samples.npz)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
