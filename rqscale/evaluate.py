"""`python -m rqscale.evaluate MODE ... --out report.json`: evaluation of trained models (Sec. 4).

  samples  FID, IS and precision/recall of generated samples against reference shards: a consolidated
           rqtransformer.pt sampled here (--checkpoint, chunks spread over Ray tasks), or the
           samples.npz that rqscale.sample wrote (--samples-npz); --clip-model adds the CLIP score. A
           contextual checkpoint reports its drafts too ("drafts"), and --speed-batches times
           Draft-and-Revise at T_draft 8 / 32 / 64 against the AR sampler of the same width (Table 4)
  recon    rFID of an RQ-VAE on reference shards, per depth d = 1..D (Table A.2), and the MSE
  clip     CLIP score of a text-conditional model on captions, with a local CLIP model

Features come from the FID Inception-v3 weights on disk (--inception-weights, default
$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth) or a TorchScript extractor
(--feature-extractor). Reference features are cached under --cache-dir ($RQSCALE_CACHE or
~/.cache/rqscale/eval). Writes the JSON report to --out and prints a summary.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from rqscale.sampling.contextual_flags import add_draft_revise_args
from rqscale.sampling.flags import add_sampling_args


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m rqscale.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = p.add_subparsers(dest="mode", required=True)
    samples = modes.add_parser("samples", help="FID / IS / precision-recall of generated samples")
    source = samples.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="rqtransformer.pt written by a stage-2 run")
    source.add_argument("--samples-npz", help="samples.npz written by rqscale.sample (evaluated in this process)")
    samples.add_argument("--reference", help="manifest.json of reference shards (FID, precision/recall); without it only IS")
    samples.add_argument("--num-reference", type=int, help="reference images used (default: all in the manifest)")
    samples.add_argument("--cache-dir", help="reference feature cache (default: $RQSCALE_CACHE or ~/.cache/rqscale/eval)")
    samples.add_argument("--clip-model", help="local CLIP directory: also the CLIP score (text models, with --captions)")
    _generation_args(samples)
    _extractor_args(samples)
    samples.add_argument("--pr-samples", type=int, default=50_000, help="images per side for precision/recall")
    samples.add_argument("--speed-batches", type=int, nargs="+", help="also time sampling at these batch sizes (Fig. 4)")
    samples.add_argument("--speed-dtype", choices=["fp32", "bf16"], default="fp32")
    clip = modes.add_parser("clip", help="CLIP score of a text-conditional model")
    clip.add_argument("--checkpoint", required=True)
    clip.add_argument("--clip-model", required=True, help="local CLIP directory (transformers save_pretrained)")
    _generation_args(clip)
    recon = modes.add_parser("recon", help="rFID of an RQ-VAE, per quantization depth")
    recon.add_argument("--rqvae", required=True, help="rqvae.pt written by a stage-1 run (or rqscale.export)")
    recon.add_argument("--rqvae-config", help="its YAML (default: <rqvae>.yaml, else config.yaml beside it)")
    recon.add_argument("--reference", required=True, help="manifest.json of validation shards")
    recon.add_argument("--num-images", type=int, help="reference images to reconstruct (default: all)")
    recon.add_argument("--batch-size", type=int, default=64)
    recon.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    _extractor_args(recon)
    for sub in (samples, clip, recon):
        _run_args(sub)
    p.set_defaults(pr_samples=50_000, reference=None, samples_npz=None, clip_model=None, speed_batches=None,
                   num_reference=None, cache_dir=None, feature_extractor=None, inception_weights=None)
    return p.parse_args(argv)


def _generation_args(p) -> None:
    p.add_argument("--num-samples", type=int, help="samples to generate (the paper: 50,000)")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--class-balanced", action="store_true", help="equally many samples of every class (class models)")
    labels.add_argument("--class-label", type=int, nargs="+", help="class labels, cycled over the samples")
    p.add_argument("--captions", help="text file, one caption per line, cycled over the samples (text models)")
    add_sampling_args(p)
    add_draft_revise_args(p)


def _extractor_args(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--inception-weights", help="FID Inception-v3 weights file (pt_inception-2015-12-05-6726825d.pth)")
    g.add_argument("--feature-extractor", help="TorchScript module: uint8 N x 3 x H x W -> N x F (also the IS logits)")


def _run_args(p) -> None:
    p.add_argument("--workers", type=int, default=2, help="Ray tasks at once (on a GPU cluster: GPUs used)")
    p.add_argument("--local", action="store_true", help="run every chunk in this process, without Ray")
    p.add_argument("--chunk-size", type=int, default=500, help="images per task; with --seed it fixes the samples")
    p.add_argument("--out", required=True, help="JSON report")


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from rqscale.eval.modes import run_mode

    start = time.time()
    try:
        report = run_mode(args)
    except (ValueError, FileNotFoundError) as exc:  # ConfigError is a ValueError
        print(f"rqscale.evaluate: error: {exc}", file=sys.stderr)
        return 2
    report["seconds"] = round(time.time() - start, 2)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(summary(report) + f" -> {args.out}")
    return 0


def summary(report: dict) -> str:
    keys = ("fid", "is", "precision", "recall", "clip_cosine", "clip_score", "rfid")
    parts = [f"{k} {report[k]:.4g}" for k in keys if isinstance(report.get(k), float)]
    if "rfid_depth" in report:
        parts.append("rfid per depth " + " ".join(f"{v:.4g}" for v in report["rfid_depth"]))
    if isinstance(report.get("codes_per_image"), dict):  # a DQ-VAE's variable code count
        c = report["codes_per_image"]
        parts.append(f"codes per image {c['mean']:.1f} +- {c['std']:.1f} ({c['min']}..{c['max']})")
    if isinstance(report.get("drafts"), dict):  # a contextual checkpoint's drafts (supplement Table 3)
        drafts = report["drafts"]
        parts.append("drafts: " + ", ".join(f"{k} {drafts[k]:.4g}" for k in keys if isinstance(drafts.get(k), float)))
    for row in report.get("speed", []):
        sampler = f" {row['sampler']}" if "sampler" in row else ""
        parts.append(f"batch {row['batch']}{sampler}: {row['seconds_per_image']:.4g} s/image")
    return f"rqscale.evaluate {report['mode']}: " + ", ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
