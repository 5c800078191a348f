"""`python -m data_prep.entropy --config CONFIG [--samples N] [--out thresholds.json] [key=value ...]`

The threshold of the DQ-VAE's entropy router (rqvae.dq.router=entropy): the pixel entropy of every 16 x 16
region of the config's first N training images (no augmentation, the config's resolution), and its
(1 - rqvae.dq.fine_ratio) quantile, the value to set as rqvae.dq.entropy_threshold. --out also writes the
percentile table in the authors' JSON layout ({"1": ..., ..., "99": ...}; R: scripts/tools/
calculate_entropy_thresholds.py), so another fine_ratio can be read off without a second pass.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

DEFAULT_SAMPLES = 2048
CHUNK = 64  # images per region_entropy call


def calibrate(config: str, overrides: list, samples: int) -> dict:
    """{"threshold", "fine_ratio", "images", "regions", "table"} for the config's training images."""
    from rqscale.config import load
    from rqscale.data.pipeline import training_images
    from rqscale.models.image_entropy import entropy_threshold, region_entropy, threshold_table

    # The threshold is what this computes: a placeholder keeps an entropy-router config from being refused for lacking it.
    cfg = load(config, ["rqvae.dq.entropy_threshold=0.0", *overrides], check_files=False)
    images = training_images(cfg, samples)
    # In chunks: one region's kernel histogram is 256 x 32 values, 17 GB for 2048 images at 256 px at once.
    entropies = torch.cat([region_entropy(chunk) for chunk in images.split(CHUNK)])
    return {"threshold": entropy_threshold(entropies, cfg.rqvae.dq.fine_ratio), "fine_ratio": cfg.rqvae.dq.fine_ratio,
            "images": int(images.shape[0]), "regions": int(entropies.numel()), "table": threshold_table(entropies)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.entropy", description=__doc__.split("\n\n")[1])
    parser.add_argument("--config", required=True, help="the stage-1 DQ-VAE config whose training data to measure")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="training images to read (the first N)")
    parser.add_argument("--out", help="also write the 1..99 percentile table here as JSON")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, as rqscale.train takes them")
    args = parser.parse_args(argv)
    result = calibrate(args.config, args.overrides, args.samples)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result["table"], f, indent=1)
    print(f"region entropy of {result['regions']} regions in {result['images']} training images: "
          f"{1 - result['fine_ratio']:.0%} lie at or below {result['threshold']:.6f} nats")
    print(f"set rqvae.dq.entropy_threshold={result['threshold']:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
