"""Training in this process: one rank, the same `TrainingLoop` loop Ray Train's workers run.

Used by tests and by anyone training without Ray; `python -m rqscale.train` launches through
`rqscale.launch` (Ray Train), which runs this loop on every worker.
"""
from __future__ import annotations

import functools
from typing import Callable

from rqscale.config import Config, ConfigError, data_kind
from rqscale.train.session import LocalSession
from rqscale.train.loop import TrainingLoop, log_dir_of, resolve_device, run_uri_of

__all__ = ["check_runnable", "log_dir_of", "resolve_device", "run", "run_dir_of", "run_uri_of"]


def run_dir_of(cfg: Config) -> str:
    """Where the run's pictures, metrics and summary are written (local)."""
    return log_dir_of(cfg)


def check_runnable(cfg: Config) -> None:
    """What this build cannot run, refused with the key to change, before any worker starts; a text
    config's tokenizer and captions are checked here too (reading the first sample of the shards)."""
    check_remote_files(cfg)
    check_same_model(cfg)
    if data_kind(cfg) == "webdataset":
        from rqscale.data.pipeline import check_shard_kind

        check_shard_kind(cfg)
    if cfg.stage == "stage2" and cfg.stage2.model.condition == "text":
        from rqscale.data.pipeline import check_text_setup

        check_text_setup(cfg)


def remote_file_keys(cfg: Config) -> list:
    """The config keys naming a weights file this run loads."""
    if cfg.stage == "stage1":
        return ["run.init_from"]
    return ["stage2.rqvae_checkpoint", "run.init_from"] + (["stage2.tokenizer"] if cfg.stage2.model.condition == "text" else [])


def check_remote_files(cfg: Config) -> None:
    """Every s3:// weights file the run will load can be read: a missing object (or missing credentials)
    is named here, not in a worker."""
    from rqscale.data.file_cache import unreadable

    for key in remote_file_keys(cfg):
        url = functools.reduce(getattr, key.split("."), cfg)
        problem = url and url.startswith("s3://") and unreadable(url)
        if problem:
            raise ConfigError(key, problem, f"upload the file there, or point {key} at one that exists")


# The keys that shape a stage's weights: a run resumed under a config that changes one cannot load its
# checkpoint (an autoregressive model's into a contextual one, say, or the reverse).
RQVAE_SHAPE = ("rqvae.kind", "rqvae.dq.router", "rqvae.dq.entropy_threshold", "rqvae.dq.decoder_ch_mult", "rqvae.dq.decoder_attn_resolutions", "rqvae.resolution", "rqvae.in_channels", "rqvae.ch", "rqvae.ch_mult", "rqvae.encoder_res_blocks",
               "rqvae.decoder_res_blocks", "rqvae.attn_resolutions", "rqvae.z_channels", "rqvae.code_shape",
               "rqvae.num_codes", "rqvae.code_dim", "rqvae.shared_codebook", "stage1.loss.disc_layers", "stage1.loss.disc_ndf")
STAGE2_SHAPE = ("stage2.model.kind", "stage2.model.embed_dim", "stage2.model.num_heads", "stage2.model.spatial_layers",
                "stage2.model.depth_layers", "stage2.model.mlp_ratio", "stage2.model.condition", "rqvae.code_shape",
                "rqvae.num_codes", "rqvae.code_dim", "rqvae.kind", "stage2.model.max_length")
CONDITION_SHAPE = {"class": ("stage2.model.num_classes",), "text": ("stage2.model.text_vocab", "stage2.model.text_length")}


def shape_keys(cfg: Config) -> tuple:
    if cfg.stage == "stage1":
        return RQVAE_SHAPE
    return STAGE2_SHAPE + CONDITION_SHAPE.get(cfg.stage2.model.condition, ())


def check_same_model(cfg: Config) -> None:
    """A run that will resume from a checkpoint must build the model that wrote it: a changed key of its
    shape is named here, before any worker starts, rather than failing in a worker's state-dict load."""
    import yaml

    from rqscale.data.storage import exists, join, read_bytes
    from rqscale.train import checkpoint as ckpt

    found = ckpt.latest_complete(run_uri_of(cfg))
    if found is None or not exists(join(found[0], "config.yaml")):
        return
    saved = yaml.safe_load(read_bytes(join(found[0], "config.yaml")))
    for key in shape_keys(cfg):
        before = functools.reduce(lambda d, k: d.get(k) if isinstance(d, dict) else None, key.split("."), saved)
        now = functools.reduce(getattr, key.split("."), cfg)
        if before is not None and before != now:
            raise ConfigError(key, f"run '{run_uri_of(cfg)}' resumes from {found[0].rsplit('/', 1)[-1]}, written by a model "
                              f"with {key}={before}, but this config has {now}",
                              f"set {key}={before} to resume it, or give the new model its own run.name")


def run(cfg: Config, log: Callable[[str], None] = print) -> dict:
    """Train cfg.stage in this process as one rank; resume from the run's newest complete checkpoint."""
    check_runnable(cfg)
    if cfg.train.num_workers != 1:
        raise ConfigError("train.num_workers", f"{cfg.train.num_workers} workers need the Ray launcher (python -m rqscale.train)",
                          "run through python -m rqscale.train, or set train.num_workers=1 for an in-process run")
    return TrainingLoop(cfg, LocalSession(run_uri_of(cfg), cfg.checkpoint.keep), log).run()
