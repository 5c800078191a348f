"""Machine description and matmul peak shared by the benchmarks (timing: rqscale/utils/timing.py)."""
from __future__ import annotations

import os
import platform
import statistics
import time

import torch

from rqscale.utils.timing import synchronize, time_fn


def machine() -> dict:
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_model() -> str:
    fallback = platform.processor() or platform.machine()
    if not os.path.exists("/proc/cpuinfo"):  # not Linux
        return fallback
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return names[0] if names else fallback


def matmul_flops(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, repeats: int = 5) -> float:
    """Measured FLOP/s of an (m x k) @ (k x n) product in `dtype`."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    seconds = time_fn(lambda: a @ b, device, repeats=repeats)
    return 2.0 * m * k * n / seconds


def interleaved(steps: dict, batches: dict, warmup: int, repeats: int, device: torch.device = torch.device("cpu")) -> dict:
    """Seconds of `repeats` steps of each contender, timed in turns (one step of each per round, the
    starting contender rotating), after `warmup` untimed rounds. steps/batches: {name: fn / list}.
    On a GPU each timed step ends when its queued kernels have finished (`synchronize`)."""
    names = list(steps)
    for i in range(warmup):
        for name in names:
            steps[name](batches[name][i % len(batches[name])], i)
    times: dict = {name: [] for name in names}
    for r in range(repeats):
        i = warmup + r
        for name in names[r % len(names):] + names[: r % len(names)]:
            synchronize(device)
            start = time.perf_counter()
            steps[name](batches[name][i % len(batches[name])], i)
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def ms(seconds: float) -> str:
    """Milliseconds for a report: whole ones from 100 ms (CPU steps), tenths below (GPU steps)."""
    return f"{seconds * 1e3:.0f}" if seconds >= 0.1 else f"{seconds * 1e3:.1f}"


def rate_of(times: list, batch: int) -> dict:
    seconds = statistics.median(times)
    return {"images_per_s": batch / seconds, "step_s": seconds, "step_times_s": times}
