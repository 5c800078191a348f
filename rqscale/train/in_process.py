"""Training in this process: one rank, the same `TrainingLoop` loop Ray Train's workers run.

Used by tests and by anyone training without Ray; `python -m rqscale.train` launches through
`rqscale.launch` (Ray Train), which runs this loop on every worker.
"""
from __future__ import annotations

from typing import Callable

from rqscale.config import Config, ConfigError
from rqscale.train.session import LocalSession
from rqscale.train.loop import TrainingLoop, log_dir_of, resolve_device, run_uri_of

__all__ = ["check_runnable", "log_dir_of", "resolve_device", "run", "run_dir_of", "run_uri_of"]


def run_dir_of(cfg: Config) -> str:
    """Where the run's pictures, metrics and summary are written (local)."""
    return log_dir_of(cfg)


def check_runnable(cfg: Config) -> None:
    """What this build cannot run yet, refused with the key to change."""
    if cfg.run.init_from and cfg.run.init_from.startswith("s3://"):
        raise ConfigError("run.init_from", "s3:// weights are not readable in this build yet", "copy the file locally and point run.init_from at it")
    if cfg.stage == "stage2" and cfg.stage2.model.condition == "text":
        raise ConfigError("stage2.model.condition", "text-conditional training is not part of this build yet", "use condition class or none")


def run(cfg: Config, log: Callable[[str], None] = print) -> dict:
    """Train cfg.stage in this process as one rank; resume from the run's newest complete checkpoint."""
    check_runnable(cfg)
    if cfg.train.num_workers != 1:
        raise ConfigError("train.num_workers", f"{cfg.train.num_workers} workers need the Ray launcher (python -m rqscale.train)",
                          "run through python -m rqscale.train, or set train.num_workers=1 for an in-process run")
    return TrainingLoop(cfg, LocalSession(run_uri_of(cfg), cfg.checkpoint.keep), log).run()
