"""`python -m rqscale.train` on Ray Train V2: a TorchTrainer whose workers run rqscale.train.loop.

- Joins the cluster this process runs on (`ray job submit` sets RAY_ADDRESS) or starts a private
  local Ray sized for the workers.
- ScalingConfig from train.num_workers (train.min_workers > 0: an elastic (min, max) range), GPU when
  the cluster has one, CPU and gloo otherwise.
- RunConfig: storage = run.output_dir (a directory or s3://; S3 through the same fsspec client the
  data readers use), name = run.name, FailureConfig(train.max_failures), checkpoints kept =
  checkpoint.keep. Resubmitting the same name resumes from its newest complete checkpoint.
- Deterministic errors inside a worker (bad data, labels the config cannot hold, repeated
  non-finite losses, a missing file) stop the run at once instead of letting Ray retry a run that cannot
  succeed: a handshake through a Ray actor, with no timing assumption (rqscale/launch/failures.py).
- A worker that raises anything writes its traceback to <log dir>/error_rank<r>.log first.
- `step_hook` (called before each step on every rank; fault injection, rqscale/bench/faults.py) reaches
  the workers pickled in train_loop_config.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
from typing import Callable, Optional

from rqscale.config import Config, from_yaml_text, to_yaml
from rqscale.data.storage import filesystem, is_s3, join, read_bytes
from rqscale.launch.console import ConsolePump, console_writer, new_console
from rqscale.launch.failures import (FatalRunError, new_channel, one_line, raise_if_fatal, report_fatal, stop_on_fatal,
                                     write_traceback)

__all__ = ["FatalRunError", "RaySession", "build_trainer", "launch", "train_fn", "with_absolute_paths"]

# Passed to workers on a cluster (a local Ray's workers inherit the whole environment anyway).
# Never credentials: on a cluster those come from the nodes' instance role.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "RQSCALE_RUNS", "RQSCALE_CACHE")


def _deterministic_errors() -> tuple:
    from rqscale.config import ConfigError
    from rqscale.data.reader import BadDataError
    from rqscale.train.telemetry import NonFiniteLossError
    from rqscale.utils.collectives import CollectiveDeviceError
    from rqscale.utils.safe_load import UnsafeCheckpointError

    return ConfigError, BadDataError, NonFiniteLossError, FileNotFoundError, UnsafeCheckpointError, CollectiveDeviceError


class RaySession:
    """rqscale.train.session.Session on Ray Train: reports and checkpoint uploads go through Ray."""

    def report(self, metrics: dict, checkpoint_dir: Optional[str], step: int) -> None:
        import ray.train
        from rqscale.train.checkpoint import checkpoint_name

        clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        if checkpoint_dir is None:
            ray.train.report(clean)
            return
        ray.train.report(clean, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir),
                         checkpoint_dir_name=checkpoint_name(step))

    def after_complete(self) -> None:
        return None  # Ray keeps checkpoint.keep checkpoints itself


def _write_line(line: str) -> None:
    """Straight to stdout: Ray Train patches a worker's print() into its logging, which echoes each
    line twice on the driver."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _quiet_worker_logs() -> None:
    """rqscale prints its own progress line; Ray Train's per-report INFO lines and the framework's
    warnings (`quiet_framework_output`) would bury it, and nobody can act on them."""
    import logging

    from rqscale.engine.setup import quiet_framework_output

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    quiet_framework_output()


def train_fn(loop_config: dict) -> None:
    """What every Ray Train worker runs: the rqscale TrainingLoop, with failures recorded (rqscale/launch/failures.py)."""
    from rqscale.engine.setup import configure_process

    configure_process()  # before anything imports deepspeed
    import ray.train
    from rqscale.train.loop import TrainingLoop, log_dir_of

    cfg, channel = from_yaml_text(loop_config["config_yaml"]), loop_config["channel"]
    raise_if_fatal(channel)  # a worker group Ray starts after a deterministic error does nothing
    _quiet_worker_logs()
    console = loop_config.get("console")
    log = console_writer(console) if console is not None else _write_line
    try:
        TrainingLoop(cfg, RaySession(), log=log, step_hook=loop_config["step_hook"]).run()
    except Exception as exc:
        rank = ray.train.get_context().get_world_rank()
        where = write_traceback(log_dir_of(cfg), f"error_rank{rank}.log", exc)
        if not isinstance(exc, _deterministic_errors()):
            raise  # Ray Train retries it (train.max_failures)
        message = f"{one_line(exc)} [rank {rank}; traceback: {where}]"
        report_fatal(channel, message)  # returns once the driver's channel has it: then raise
        raise FatalRunError(message) from exc


# ---- the driver --------------------------------------------------------------------------------

# Config fields holding local paths. Ray Train runs the workers in a session directory, so a path
# relative to where `python -m rqscale.train` was typed must be made absolute before they start.
PATH_KEYS = (("run", "output_dir"), ("run", "init_from"), ("data", "shards"), ("stage2", "rqvae_checkpoint"),
             ("stage2", "tokenizer"), ("stage1.loss", "lpips_backbone"))


def with_absolute_paths(cfg: Config) -> Config:
    """A copy of cfg whose local paths are absolute (s3:// URLs and unset fields are left alone)."""
    import copy

    cfg = copy.deepcopy(cfg)
    for section, key in PATH_KEYS:
        owner = cfg
        for part in section.split("."):
            owner = getattr(owner, part)
        value = getattr(owner, key)
        if value and not is_s3(value):
            setattr(owner, key, os.path.abspath(value))
    return cfg


def _init_ray(cfg: Config) -> bool:
    """Connect to the surrounding cluster, or start a private one; True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    # Quiet by default: worker output stays in Ray's logs; rqscale's lines come through the console.
    shown = dict(log_to_driver=cfg.run.verbose, logging_level=logging.INFO if cfg.run.verbose else logging.ERROR)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env={"env_vars": env}, **shown)
        return False
    cpus = max(os.cpu_count() or 1, cfg.train.num_workers * cfg.train.cpus_per_worker)
    # The dashboard (loopback only) serves the state API that Ray Train's placement-group cleaner polls;
    # without it every poll logs a warning.
    ray.init(num_cpus=cpus, include_dashboard=True, dashboard_host="127.0.0.1", runtime_env={"env_vars": env}, **shown)
    return True


def _storage(cfg: Config) -> tuple:
    """(storage_path, storage_filesystem) for Ray: S3 through rqscale's own fsspec client."""
    if not is_s3(cfg.run.output_dir):
        return os.path.abspath(cfg.run.output_dir), None
    import pyarrow.fs

    handler = pyarrow.fs.FSSpecHandler(filesystem(cfg.run.output_dir))
    return cfg.run.output_dir[len("s3://"):].rstrip("/"), pyarrow.fs.PyFileSystem(handler)


def build_trainer(cfg: Config, channel, step_hook: Optional[Callable] = None, console=None):
    """The TorchTrainer; `channel` is the FatalChannel actor the workers report deterministic errors to;
    `console` the ConsoleChannel their lines go to (None: their stdout, forwarded by Ray)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t = cfg.train
    gpu = t.device == "cuda" or (t.device == "auto" and _cluster_has_gpus())
    workers = (t.min_workers, t.num_workers) if t.min_workers else t.num_workers
    path, fs = _storage(cfg)
    return TorchTrainer(
        train_fn,
        train_loop_config={"config_yaml": to_yaml(cfg), "channel": channel, "step_hook": step_hook, "console": console},
        # Plain NCCL on GPUs, not a device-mapped "cpu:gloo,cuda:nccl" (which Ray 2.60 also accepts): every
        # collective of rqscale's runs on the engine's device (rqscale/utils/collectives.py), so a host tensor
        # reaching a collective is a bug, and NCCL makes it fail loudly instead of silently taking gloo.
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu, resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=RunConfig(name=cfg.run.name, storage_path=path, storage_filesystem=fs,
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
                             callbacks=[stop_on_fatal()]),
    )


def _cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def launch(cfg: Config, log: Callable[[str], None] = print, step_hook: Optional[Callable] = None) -> dict:
    """Run the training job on Ray Train; return rank 0's summary. Raises FatalRunError at once when a
    worker reports a deterministic error. `step_hook(step=, rank=, fresh=, log_dir=)` runs before each
    step on every rank (it must pickle: Ray ships it to the workers)."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")  # Train V2 (DESIGN.md): elastic scaling, restarts
    import ray

    cfg = with_absolute_paths(cfg)
    os.environ["RQSCALE_RUNS"] = os.path.abspath(os.environ.get("RQSCALE_RUNS", "runs"))  # local logs of s3 runs

    started = _init_ray(cfg)
    try:
        channel, console = new_channel(), None if cfg.run.verbose else new_console()
        with ConsolePump(console, log) if console is not None else contextlib.nullcontext():
            _fit_until_done_or_fatal(build_trainer(cfg, channel, step_hook, console), channel, attached=not started)
        return _read_summary(cfg)
    finally:
        if started:
            ray.shutdown()  # also ends a run stopped by a fatal error: its workers are this cluster's


def _fit_until_done_or_fatal(trainer, channel, attached: bool) -> None:
    """trainer.fit() in a thread while this one waits on the channel, which wakes on a worker's fatal
    report or when fit() ends; no polling, no timeout (rqscale/launch/failures.py)."""
    import ray

    outcome: dict = {}
    thread = threading.Thread(target=_fit, args=(trainer, channel, outcome), daemon=True)
    thread.start()
    error = ray.get(channel.wait.remote())
    if error is not None:
        if attached:  # on a shared cluster, return only once Ray Train has stopped the run (StopOnFatal)
            thread.join()
        raise FatalRunError(error)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]


def _fit(trainer, channel, outcome: dict) -> None:
    try:
        outcome["result"] = trainer.fit()
    except BaseException as exc:  # handed to the main thread, which raises it
        outcome["error"] = exc
    finally:
        import ray

        if ray.is_initialized():  # not after a fatal stop's ray.shutdown(): nobody is waiting then
            channel.finish.remote()


def _read_summary(cfg: Config) -> dict:
    from rqscale.train.loop import log_dir_of, run_uri_of

    local = os.path.join(log_dir_of(cfg), "summary.json")
    url = local if os.path.exists(local) else join(join(run_uri_of(cfg), "logs"), "summary.json")
    return json.loads(read_bytes(url))
