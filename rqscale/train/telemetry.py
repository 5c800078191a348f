"""What rank 0 records while training: metrics.jsonl, TensorBoard scalars and images, progress lines.

Throughput is reported per step from the global batch and the step's wall time:
  images/s = samples / seconds,  tokens/s = images/s * H*W*D
  TFLOP/s per worker = flops_per_sample * samples / seconds / world_size / 1e12
  MFU = TFLOP/s per worker / peak TFLOP/s of one worker's chip
flops_per_sample comes from rqscale.train.flops (model FLOPs, no recompute); the peak from
rqscale.utils.peak (train.peak_tflops, else a GPU's datasheet, else the CPU's measured matmul peak),
named once in the log as `peak_source`.

Also here: NonFiniteGuard, which skips steps whose loss is NaN/inf and stops a diverged run.
"""
from __future__ import annotations

import json
import math
import numbers
import os
from typing import Callable, Optional

import torch

# TensorBoard groups tags by their first path component.
PERF_KEYS = ("images_per_s", "tokens_per_s", "tflops_per_worker", "mfu", "mem_gb")
OPTIM_KEYS = ("lr", "grad_norm", "loss_scale", "skipped_total")


def memory_gb() -> float:
    """Peak CUDA memory allocated by this process when it uses CUDA, else its resident set size, in GB.

    RSS on CPU (not a peak): host memory is what a CPU run runs out of."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 1e9
    try:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (OSError, ValueError, IndexError):  # not Linux: peak RSS (kB on Linux, bytes on macOS)
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1e9 if sys.platform == "darwin" else 1e6)


def throughput(samples: int, seconds: float, *, world_size: int, flops_per_sample: float,
               tokens_per_sample: int, peak_tflops: float) -> dict:
    """images_per_s, tokens_per_s, tflops_per_worker and mfu of one step (see module docstring)."""
    if seconds <= 0:
        raise ValueError(f"a step's wall time must be > 0 seconds, got {seconds}")
    images_per_s = samples / seconds
    tflops = flops_per_sample * images_per_s / world_size / 1e12
    return {"images_per_s": images_per_s, "tokens_per_s": images_per_s * tokens_per_sample,
            "tflops_per_worker": tflops, "mfu": tflops / peak_tflops}


DATA_KEYS = ("skipped_samples",)  # unreadable samples skipped so far, all ranks (rqscale/data/reader.py)


def scalar_tag(key: str) -> str:
    if key in DATA_KEYS:
        return f"data/{key}"
    if key in PERF_KEYS:
        return f"perf/{key}"
    if key in OPTIM_KEYS:
        return f"optim/{key}"
    return f"train/{key}"


def _number(value) -> Optional[float]:
    """A float for real numbers and one-element tensors; None for anything else (and bools)."""
    if torch.is_tensor(value):
        return float(value) if value.numel() == 1 else None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return None


def _plain(value):
    """A JSON-ready value: ints stay ints, other numbers and scalar tensors become floats."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    number = _number(value)
    if number is not None:
        return number
    return value if isinstance(value, (str, bool, type(None), list, dict)) else str(value)


def _drop_lines_from(path: str, first_step: int) -> None:
    """Remove records of steps >= first_step: steps re-run after a resume must not appear twice."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        kept = [line for line in f if line.strip() and json.loads(line).get("step", -1) < first_step]
    with open(path, "w") as f:
        f.writelines(kept)


class Telemetry:
    """Rank 0's metrics sink. With enabled=False (other ranks) every method does nothing.

    `log_dir` must be a local directory: metrics.jsonl and tensorboard/ are written there.
    `resume_step`: a resumed run's first step; earlier records are kept and later ones (written
    before a crash, after the checkpoint) are dropped from metrics.jsonl and hidden in TensorBoard.
    """

    def __init__(self, log_dir: str, *, enabled: bool, world_size: int, flops_per_sample: float,
                 tokens_per_sample: int, peak_tflops: float, log_every: int, keys: tuple,
                 log: Callable[[str], None] = print, resume_step: Optional[int] = None,
                 peak_source: Optional[str] = None):
        self.enabled, self.log_dir, self.log = enabled, log_dir, log
        self.rates = dict(world_size=world_size, flops_per_sample=flops_per_sample,
                          tokens_per_sample=tokens_per_sample, peak_tflops=peak_tflops)
        self.log_every, self.keys = log_every, tuple(keys)
        self.peak = {"peak_tflops": peak_tflops, "peak_source": peak_source}  # for a run's summary
        self._file = self._writer = None
        if enabled:
            self._open(resume_step)
            if peak_source:  # what the MFU column is a fraction of, said once
                log(f"MFU against {peak_source}: {peak_tflops:.4g} TFLOP/s per worker")

    def _open(self, resume_step: Optional[int]) -> None:
        from torch.utils.tensorboard import SummaryWriter  # local: only rank 0 needs tensorboard

        os.makedirs(self.log_dir, exist_ok=True)
        path = os.path.join(self.log_dir, "metrics.jsonl")
        if resume_step is not None:
            _drop_lines_from(path, resume_step)
        self._file = open(path, "a")  # append: a resumed run continues the file
        self._writer = SummaryWriter(log_dir=os.path.join(self.log_dir, "tensorboard"), purge_step=resume_step)

    def step(self, step: int, metrics: dict, samples: int, seconds: float, *, force_log: bool = False,
             show: Optional[bool] = None) -> dict:
        """Record one optimizer step of `samples` images (all workers) taking `seconds`.

        Returns {"step", **metrics, images_per_s, tokens_per_s, tflops_per_worker, mfu, mem_gb};
        prints a progress line every log_every steps, or when force_log (e.g. the last step); `show`,
        when given, decides alone (the trainer shows the last step of each logging window)."""
        if not self.enabled:
            return {"step": step, **metrics}
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        record.update(throughput(samples, seconds, **self.rates), mem_gb=memory_gb())
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # a crash keeps every finished step
        for key, value in record.items():
            number = _number(value)
            if key != "step" and number is not None:
                self._writer.add_scalar(scalar_tag(key), number, step)
        if show if show is not None else (force_log or step % self.log_every == 0):
            self.log(self.progress_line(record))
        return record

    def progress_line(self, record: dict) -> str:
        shown = "  ".join(f"{k} {record[k]:.4f}" for k in self.keys if _number(record.get(k)) is not None)
        line = (f"step {record['step']:>6}  {shown}  images/s {record['images_per_s']:.1f}  "
                f"MFU {100 * record['mfu']:.1f}%  mem {record['mem_gb']:.2f} GB")
        for key, what in (("skipped_samples", "samples"), ("skipped_steps", "steps")):  # shown once there are any
            if record.get(key):
                line += f"  skipped {record[key]} {what}"
        return line

    def image(self, tag: str, png_path: str, step: int) -> None:
        """Add a PNG (e.g. a sample grid) to TensorBoard under `tag`."""
        if not self.enabled:
            return
        import numpy as np
        from PIL import Image

        with Image.open(png_path) as img:
            pixels = np.asarray(img.convert("RGB"))
        self._writer.add_image(tag, pixels, step, dataformats="HWC")

    def flush(self) -> None:
        if self.enabled:
            self._file.flush()
            self._writer.flush()

    def close(self) -> None:
        if self.enabled and self._writer is not None:
            self._file.close()
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "Telemetry":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NonFiniteLossError(RuntimeError):
    """Too many consecutive NaN/inf losses: the run has diverged."""


class NonFiniteGuard:
    """Skip steps whose loss is NaN/inf; raise after more than `max_in_row` in a row.

    Every rank must call check() with the same (all-reduced) loss, so that all skip together."""

    def __init__(self, max_in_row: int):
        self.max_in_row = max_in_row
        self.skipped_total = 0
        self.in_row = 0

    def check(self, loss: float, step: int) -> bool:
        """True if this step must be skipped (no optimizer update)."""
        loss = float(loss)
        if math.isfinite(loss):
            self.in_row = 0
            return False
        self.skipped_total += 1
        self.in_row += 1
        if self.in_row > self.max_in_row:
            raise NonFiniteLossError(
                f"loss is {loss} at step {step}: {self.in_row} non-finite losses in a row, more than "
                f"train.max_nonfinite_steps={self.max_in_row} ({self.skipped_total} skipped in total). "
                "Lower the learning rate (stage1.optim.lr / stage2.optim.lr) or add warm-up, and check the data "
                "for corrupt samples; raise train.max_nonfinite_steps only if the spikes are known to be transient."
            )
        return True

    def state_dict(self) -> dict:
        return {"skipped_total": self.skipped_total, "in_row": self.in_row}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_total = int(state["skipped_total"])
        self.in_row = int(state["in_row"])
