"""The training loop every rank runs, under Ray Train or in one process: no Ray imports here.

    resume (newest complete checkpoint in storage; universal conversion if the world size changed)
    -> for each step: this rank's micro-batches -> engine step (non-finite losses skipped)
       -> telemetry on rank 0 -> every checkpoint.every_steps and at the end: checkpoint
    -> rank 0: consolidated fp32 weights, a picture, summary.json
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Callable, Optional

import torch
import torch.distributed as dist

from rqscale.config import Config, save_resolved
from rqscale.config.validate import batch_plan
from rqscale.data.pipeline import RankBatches
from rqscale.data.reader import EXAMPLES_KEPT
from rqscale.data.storage import is_s3, join
from rqscale.engine import init_distributed, to_universal
from rqscale.engine.precision import with_resolved_precision
from rqscale.train import checkpoint as ckpt
from rqscale.train.flops import flops_and_tokens_per_sample
from rqscale.train.session import Session
from rqscale.train.telemetry import NonFiniteGuard, Telemetry
from rqscale.train.window import MetricWindow
from rqscale.utils.collectives import DeviceCollectives
from rqscale.utils.memory import retain_freed_memory
from rqscale.utils.peak import resolve_peak


# Called before each step as hook(step=, rank=, fresh=, log_dir=): how tests and the recovery benchmark
# inject faults (rqscale/bench/faults.py). `fresh` is False in an attempt that resumed a checkpoint.
StepHook = Callable[..., None]
PROGRESS_KEYS = {"stage1": ("g/recon", "g/commit", "g/lpips", "g/code_usage", "g/fine_share", "g/codes_per_image", "lr"),
                 "stage2": ("loss", "depth1", "text", "content", "coarse_position", "fine_position", "padding", "grad_norm",
                            "lr")}  # text: text models only; content ... padding: DQ-Transformers only
# Batch fields that stay on the host: the DQ-VAE code shards' sequence lengths, which the DQ-Transformer's packing
# reads without a device-to-host copy (rqscale/tasks/dq_stage2.py).
HOST_FIELDS = ("lengths",)


def batch_to_device(batch: dict, device) -> dict:
    """A micro-batch's tensors on the step's device, queued without waiting, but for HOST_FIELDS."""
    return {k: v if k in HOST_FIELDS else v.to(device, non_blocking=True) for k, v in batch.items()}


DQ_LOSS_PARTS = ("content", "coarse_position", "fine_position", "padding")


def run_uri_of(cfg: Config) -> str:
    return join(cfg.run.output_dir, cfg.run.name)


def log_dir_of(cfg: Config) -> str:
    """Where rank 0 writes metrics, TensorBoard events and pictures: the run itself when storage is
    local; a local mirror (synced at checkpoints) when it is s3://."""
    if is_s3(cfg.run.output_dir):
        return os.path.join(os.environ.get("RQSCALE_RUNS", "runs"), cfg.run.name)
    return run_uri_of(cfg)


def resolve_device(name: str) -> torch.device:
    """The device this process trains on. A bare "cuda" gets an index: the local rank's GPU, the one
    DeepSpeed's engine binds to (LOCAL_RANK, which Ray Train sets), so collectives can be checked against it."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _engines_class(cfg: Config):
    if cfg.stage == "stage1":
        from rqscale.train.stage1_engine import Stage1Engines
        return Stage1Engines
    from rqscale.train.stage2_engine import Stage2Engines
    return Stage2Engines


# ---- resume ------------------------------------------------------------------------------------

def _other_rank_shard(name: str, rank: int) -> bool:
    """DeepSpeed's per-rank ZeRO files another rank needs, not this one."""
    import re

    m = re.search(r"zero_pp_rank_(\d+)_", name)
    return m is not None and int(m.group(1)) != rank


def find_restore(cfg: Config, tags: tuple, work: str, rank: int, world: int, collectives: DeviceCollectives) -> Optional[dict]:
    """Download what this rank needs of the newest complete checkpoint; convert to universal when it
    was written by a different number of ranks. None for a fresh start."""
    found = collectives.broadcast_object(ckpt.latest_complete(run_uri_of(cfg)) if rank == 0 else None)
    if found is None:
        return None
    url, marker = found
    local = os.path.join(work, "restore")
    if marker["world_size"] == world:
        ckpt.download(url, local, skip=lambda name: _other_rank_shard(name, rank))
        return {"step": marker["step"], "dir": local, "url": url, "tags": {t: t for t in tags}, "universal": False}
    if rank == 0:
        ckpt.download(url, local)
        for tag in tags:
            ckpt.publish_dir(os.path.join(local, to_universal(local, tag)), join(url, tag + "_universal"))
    collectives.barrier()
    if rank != 0:
        ckpt.download(url, local, skip=lambda name: not (name.startswith(tuple(t + "_universal/" for t in tags)) or name.startswith("rank_")))
    return {"step": marker["step"], "dir": local, "url": url, "tags": {t: t + "_universal" for t in tags}, "universal": True}


def _rank_state(restore: dict, rank: int) -> tuple:
    """(this rank's saved state or None after a resize, rank 0's saved state). A refused file is named
    by its place in storage, not by this worker's temporary copy."""
    from rqscale.utils.safe_load import UnsafeCheckpointError

    try:
        return ckpt.load_rank_state(restore["dir"], rank), ckpt.load_rank_state(restore["dir"], 0)
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(str(exc).replace(restore["dir"], restore["url"])) from None


# ---- the loop ----------------------------------------------------------------------------------

class TrainingLoop:
    """One rank's training run. `run()` returns the summary on rank 0 (None elsewhere)."""

    def __init__(self, cfg: Config, session: Session, log: Callable[[str], None] = print,
                 step_hook: Optional[StepHook] = None):
        if resolve_device(cfg.train.device).type == "cpu":
            retain_freed_memory()  # CPU steps otherwise page-fault every large tensor in afresh (bench train)
        self.device = resolve_device(cfg.train.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # NCCL and DeepSpeed use the current device
        init_distributed()
        self.cfg, self.session, self.log = with_resolved_precision(cfg, self.device), session, log
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.collectives = DeviceCollectives(self.device)  # every collective rqscale issues itself
        self.work = tempfile.mkdtemp(prefix=f"rqscale-{cfg.run.name}-r{self.rank}-")
        self.log_dir = log_dir_of(cfg)
        self.extra: dict = {}  # run facts that survive restarts (first loss, eval before training)
        self.skipped_at_start = 0  # unreadable samples skipped before this attempt (all ranks)
        self.step_hook = step_hook

    def run(self) -> Optional[dict]:
        try:
            return self._run()
        finally:
            shutil.rmtree(self.work, ignore_errors=True)

    def _run(self) -> Optional[dict]:
        cfg = self.cfg
        engines_cls = _engines_class(cfg)
        restore = find_restore(cfg, engines_cls.tags, self.work, self.rank, self.world, self.collectives)
        if self.rank == 0:
            where = f"{self.world} workers on {self.device.type}, {cfg.engine.precision}"
            self.log(f"rqscale: worker group started: {where}, " + (f"resuming step {restore['step']}" if restore else "fresh start"))
        self.data = RankBatches(cfg, self.rank, self.world, batch_plan(cfg, self.world)[1])  # first: bad labels fail fast
        torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank
        self.engines = engines_cls(cfg, self.world, self.device, universal=bool(restore and restore["universal"]))
        self.guard = NonFiniteGuard(cfg.train.max_nonfinite_steps)
        start = self._restore(restore) if restore else self._fresh_start()
        self.telemetry = self._telemetry(start)
        try:
            self._loop(start, fresh=restore is None)
            return self._finish()
        finally:
            self.telemetry.close()

    def _fresh_start(self) -> int:
        torch.manual_seed(self.cfg.run.seed * 1000 + self.rank + 1)  # per-rank streams: dropout, stochastic codes
        if self.rank == 0:
            os.makedirs(self.log_dir, exist_ok=True)
            save_resolved(self.cfg, os.path.join(self.log_dir, "config.yaml"))
            if self.cfg.stage == "stage1":
                from rqscale.eval import coarse_to_fine
                self.extra["eval_before"] = coarse_to_fine(self.engines.task.rqvae, self.engines.held_out_images())
        return 0

    def _restore(self, restore: dict) -> int:
        self.engines.load(restore["dir"], restore["tags"])
        own, first = _rank_state(restore, self.rank)
        self.data.load_state_dict(first["data"])  # the reader's position is global; any rank's will do
        self.guard.load_state_dict(first["guard"])
        self.extra = first["extra"]
        self.skipped_at_start = self.extra.get("skipped_samples", 0)  # the readers count from here on
        if own is not None:
            ckpt.set_rng_state(own["rng"])
        else:  # a rank that did not exist before the resize: a fresh stream keyed by the step
            torch.manual_seed(self.cfg.run.seed * 1000 + self.rank + 1 + restore["step"])
        self.engines.on_sync()  # what the uninterrupted run did at this (checkpoint) step
        if self.rank == 0:
            self.log(f"resumed from step {restore['step']} ({'universal, ' if restore['universal'] else ''}{self.world} workers)")
        return restore["step"]

    def _telemetry(self, start: int) -> Telemetry:
        flops, tokens = flops_and_tokens_per_sample(self.cfg)
        t = self.cfg.train
        peak = resolve_peak(self.device, t.peak_tflops, self.cfg.engine.precision)  # every rank: CPU peers measure together
        return Telemetry(self.log_dir, enabled=self.rank == 0, world_size=self.world, flops_per_sample=flops,
                         tokens_per_sample=tokens, peak_tflops=peak.tflops, peak_source=peak.source, log_every=t.log_every,
                         keys=PROGRESS_KEYS[self.cfg.stage], log=self.log, resume_step=start or None)

    def _loop(self, start: int, fresh: bool) -> None:
        """Steps queue device work only; the host reads metrics back at logging and checkpoint steps
        (and once after the first step, so a person sees the run move)."""
        t, every = self.cfg.train, self.cfg.checkpoint.every_steps
        window = MetricWindow(self.device, summed=("skipped_samples",))
        for step in range(start, t.max_steps):
            if self.step_hook is not None:
                self.step_hook(step=step, rank=self.rank, fresh=fresh, log_dir=self.log_dir)
            micro = [batch_to_device(b, self.device) for b in self.data.next_step()]
            metrics, taken = self.engines.step(micro, step)
            window.add(step, {**metrics, "taken": taken, "skipped_samples": self.data.skipped_samples})
            done = step + 1
            checkpoint = done % every == 0 or done == t.max_steps
            logging = checkpoint or done % t.log_every == 0
            if logging or step == start:
                last = self._read_metrics(window, sync_point=logging)
            if checkpoint:
                self._checkpoint(done, last)
            elif logging:  # a Ray report synchronises the workers: not every step
                self.session.report(last, None, done)
            if t.picture_every and done % t.picture_every == 0 and done != t.max_steps:
                self._picture(done)

    def _read_metrics(self, window: MetricWindow, sync_point: bool) -> dict:
        """Bring the window's metrics to the host (averaged over ranks), check the non-finite guard,
        record every step; the last step's record. At logging/checkpoint steps the engines may also
        read the device (stage 1 plans codebook restarts there); the extra first-step read may not, so
        that a resumed run takes exactly the decisions of an uninterrupted one."""
        if sync_point:
            self.engines.on_sync()
        records, seconds = window.reduce(self.collectives)
        for record in records:
            skipped = record.pop("taken") < 0.5
            self.guard.check(float("nan") if skipped else record["loss"], record["step"])
            record["skipped_steps"] = self.guard.skipped_total
            record["skipped_samples"] += self.skipped_at_start  # the run's total, across restarts
            self.extra.setdefault("first_loss", record["loss"])
            self.extra.setdefault("first_recon", record.get("g/recon"))
            shown = record is records[-1]
            record = self.telemetry.step(record["step"], record, samples=self.cfg.train.global_batch, seconds=seconds, show=shown)
        self.extra["last"] = record
        self.extra["skipped_samples"] = record["skipped_samples"]
        return record

    def _checkpoint(self, done: int, metrics: dict) -> None:
        local = os.path.join(self.work, ckpt.checkpoint_name(done))
        os.makedirs(local, exist_ok=True)
        self.engines.save(local)
        self.extra["skipped_examples"] = self._skipped_examples()
        state = {"step": done, "world_size": self.world, "data": self.data.state_dict(), "rng": ckpt.rng_state(),
                 "guard": self.guard.state_dict(), "extra": self.extra}
        ckpt.save_rank_state(local, self.rank, state)
        if self.rank == 0:
            save_resolved(self.cfg, os.path.join(local, "config.yaml"))
        self.session.report(metrics, local, done)
        self.collectives.barrier()  # every rank's files are in storage before the marker makes them loadable
        if self.rank == 0:
            ckpt.mark_complete(run_uri_of(self.cfg), done, self.world)
            self.log(f"rqscale: checkpoint at step {done} complete in {join(run_uri_of(self.cfg), ckpt.checkpoint_name(done))}")
            self.session.after_complete()
            self._sync_logs()
        self.collectives.barrier()
        shutil.rmtree(local, ignore_errors=True)

    def _skipped_examples(self) -> list:
        """The first few skipped samples over all ranks and attempts, [key, reason] (a collective)."""
        seen = {key: [key, reason] for key, reason in self.extra.get("skipped_examples", [])}
        for rank_examples in self.collectives.all_gather_object(self.data.skipped_examples):
            for key, reason in rank_examples:
                seen.setdefault(key, [key, reason])
        return list(seen.values())[:EXAMPLES_KEPT]

    def _picture(self, done: int) -> None:
        name = "reconstructions" if self.cfg.stage == "stage1" else "samples"
        path = self.engines.picture(os.path.join(self.log_dir, "pictures", f"{name}_{done:08d}.png"))
        if path is not None:
            self.telemetry.image(name, path, done)

    def _sync_logs(self) -> None:
        if is_s3(self.cfg.run.output_dir):
            self.telemetry.flush()
            ckpt.publish_dir(self.log_dir, join(run_uri_of(self.cfg), "logs"))

    def _finish(self) -> Optional[dict]:
        """Rank 0: consolidated fp32 weights from the final checkpoint, the picture, summary.json."""
        name = "reconstructions.png" if self.cfg.stage == "stage1" else "samples.png"
        picture = self.engines.picture(os.path.join(self.log_dir, name)) if self.cfg.stage == "stage1" else None
        self.extra["skipped_examples"] = self._skipped_examples()  # every rank takes part in the gather
        if self.rank != 0:
            return None
        final = os.path.join(self.work, "final")
        ckpt.download(join(run_uri_of(self.cfg), ckpt.checkpoint_name(self.cfg.train.max_steps)), final)
        weights = self.engines.export(final, self.log_dir)
        summary = self._summary(weights, picture)
        with open(os.path.join(self.log_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        self._sync_logs()
        return summary

    def _summary(self, weights: str, picture: Optional[str]) -> dict:
        last = self.extra.get("last", {})
        common = {"stage": self.cfg.stage, "steps": self.cfg.train.max_steps, "workers": self.world,
                  "weights": weights, "skipped_steps": self.guard.skipped_total, "loss_first_step": self.extra.get("first_loss"),
                  "loss_last_step": last.get("loss"), "skipped_samples": self.extra.get("skipped_samples", 0),
                  "skipped_examples": [{"key": k, "reason": r} for k, r in self.extra["skipped_examples"]], **self.telemetry.peak}
        if self.cfg.stage == "stage1":
            from rqscale.train.stage1_summary import stage1_summary
            return {**common, **stage1_summary(self.engines, self.extra, picture)}
        from rqscale.sampling.checkpoint import load_consolidated
        from rqscale.tasks import stage2_task
        from rqscale.train.stage2 import run_picture

        _, rqvae, model = load_consolidated(weights)
        task = stage2_task(self.cfg, rqvae)
        task.model.load_state_dict(model.state_dict())
        task.to(self.device)  # on a GPU run, sampling the grid on the CPU would take minutes at full size
        picture = run_picture(task, self.cfg, os.path.join(self.log_dir, "samples.png"))
        if self.cfg.stage2.model.kind == "dq":  # one code per token: the loss by part, not by depth
            return {**common, "checkpoint": weights, "picture": picture,
                    "loss_parts_last_step": {k: last.get(k) for k in DQ_LOSS_PARTS}}
        depth = self.cfg.rqvae.code_shape[2]
        return {**common, "checkpoint": weights, "picture": picture,
                "loss_by_depth_last_step": [last.get(f"depth{d + 1}") for d in range(depth)]}
