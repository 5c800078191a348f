"""Throughput and wall time at an assumed MFU (model FLOPs utilisation).

images/s = world x peak FLOP/s x MFU / training FLOPs per image (rqscale/train/flops.py: model FLOPs,
forward + backward). MFU counts no recomputation: with stage2.model.activation_checkpointing the GPUs
also rerun every block's forward (about 4/3 of the model FLOPs), so the same MFU asks for a higher
hardware utilisation. The paper's schedule is train.max_steps x train.global_batch images (the configs
carry it; see the comment at the top of each config file).
"""
from __future__ import annotations

from typing import Optional

from rqscale.config import Config, data_kind

# Training-set sizes of the paper's datasets (A.3 and the config comments), matched in data.shards.
PAPER_DATASETS = (
    ("imagenet", 1_281_167),  # ILSVRC-2012 train (Russakovsky et al. 2015)
    ("cc3m", 3_318_333),  # Conceptual Captions train pairs (Sharma et al. 2018)
    ("ffhq", 60_000),  # FFHQ's 60,000-image training split (configs/rq_ffhq_355m.yaml)
    ("cat", 1_657_266),  # LSUN-cat (configs/rq_lsun_cat_612m.yaml)
    ("bedroom", 3_033_042),  # LSUN-bedroom (configs/rq_lsun_bedroom_612m.yaml)
    ("church", 126_227),  # LSUN-church outdoor (configs/rq_lsun_church_370m.yaml)
)
DIGITS = 1_797  # scikit-learn's digits, the bundled demo set (DESIGN.md)


def dataset_size(cfg: Config) -> tuple:
    """(name, images per epoch) the config trains on, or (None, None) when it cannot be told."""
    d = cfg.data
    if data_kind(cfg) == "bundled":
        return (f"bundled-{d.bundled_set}", DIGITS if d.bundled_set == "digits" else d.num_samples)
    shards = d.shards.lower()
    return next(((name, n) for name, n in PAPER_DATASETS if name in shards), (None, None))


def speed(cfg: Config, train_flops: float, world: int, peak_flops: float, mfu: float,
          images_per_epoch: Optional[int]) -> dict:
    ips = world * peak_flops * mfu / train_flops
    t = cfg.train
    images = t.max_steps * t.global_batch
    out = {"images_per_s": ips, "seconds_per_step": t.global_batch / ips, "schedule_steps": t.max_steps,
           "schedule_images": images, "schedule_days": images / ips / 86400,
           "epoch_hours": None, "schedule_epochs": None}
    if images_per_epoch:
        out["epoch_hours"] = images_per_epoch / ips / 3600
        out["schedule_epochs"] = images / images_per_epoch
    return out
