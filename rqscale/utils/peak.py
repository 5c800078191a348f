"""The MFU denominator of one worker: the peak FLOP/s of the chip it trains on (rqscale/train/telemetry.py).

MFU = achieved model FLOP/s / peak FLOP/s (PaLM, Chowdhery et al. 2022, App. B). Resolved once per worker,
before the first step (no host work inside the steps), in this order:
1. train.peak_tflops when set: a GPU the table lacks, a power-capped part, or a number to compare against;
2. CUDA: NVIDIA's datasheet dense (no sparsity) tensor-core peak in bf16, by torch.cuda.get_device_name();
   an unknown name gets the A100's 312 and a note saying so;
3. CPU: no datasheet number applies (cores, SIMD extensions and clocks vary, and other processes share them),
   so the matmul peak is measured: ~0.5 s of 1024^3 products in the run's precision with this worker's torch
   thread count, the fastest kept. It matters: without AVX512-BF16 / AMX, bf16 matmuls run several times
   slower than fp32 (25 vs 120 GFLOP/s on 2 cores of the development machines, DESIGN.md), and MFU
   against an A100 read 0.01%.
"""
from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from typing import Optional

import torch

# (pattern searched in torch.cuda.get_device_name(), dense TFLOP/s, source). First match wins, so the lower-
# clocked PCIe / NVL parts come before the SXM names they contain. NVIDIA datasheets, bf16 tensor core; their
# headline figures are "with sparsity", twice the dense rate given here.
DATASHEET_TFLOPS = (
    (r"H100.*PCIe", 756.0, "NVIDIA H100 datasheet, PCIe: bf16 1,513 TFLOPS with sparsity, 756 dense"),
    (r"H100 NVL", 835.0, "NVIDIA H100 datasheet, NVL: bf16 1,671 TFLOPS with sparsity, 835 dense"),
    (r"H100", 989.0, "NVIDIA H100 datasheet, SXM: bf16 1,979 TFLOPS with sparsity, 989 dense"),
    (r"H200 NVL", 835.0, "NVIDIA H200 datasheet, NVL: bf16 1,671 TFLOPS with sparsity, 835 dense"),
    (r"H200", 989.0, "NVIDIA H200 datasheet, SXM: bf16 1,979 TFLOPS with sparsity, 989 dense (H100's chip)"),
    (r"A100", 312.0, "NVIDIA A100 datasheet: bf16 624 TFLOPS with sparsity, 312 dense (SXM and PCIe)"),
    (r"A10G?\b", 125.0, "NVIDIA A10 datasheet (A10G: AWS's A10): bf16 250 TFLOPS with sparsity, 125 dense"),
    (r"L4\b", 121.0, "NVIDIA L4 datasheet: bf16 242 TFLOPS with sparsity, 121 dense"),
    (r"V100.*PCIE", 112.0, "NVIDIA V100 datasheet, PCIe: fp16 tensor 112 TFLOPS (Volta has no bf16)"),
    (r"V100", 125.0, "NVIDIA V100 datasheet, SXM2: fp16 tensor 125 TFLOPS (Volta has no bf16)"),
)
FALLBACK_TFLOPS = 312.0  # A100, the paper's GPU (A.3)

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}  # engine.precision -> the dtype matmuls run in


@dataclass(frozen=True)
class Peak:
    tflops: float  # per worker
    source: str  # where the number comes from, for the log


def gpu_peak(device_name: str) -> Peak:
    """The datasheet peak of a CUDA device by its name; A100's with a note when the name is unknown."""
    for pattern, tflops, source in DATASHEET_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return Peak(tflops, f"{device_name}: {source}")
    return Peak(FALLBACK_TFLOPS, f"unknown GPU '{device_name}': A100's {FALLBACK_TFLOPS:g} assumed; "
                                 "set train.peak_tflops to its dense bf16 peak")


def matmul_tflops(dtype: torch.dtype = torch.bfloat16, seconds: float = 0.5, n: int = 1024) -> float:
    """Fastest (n x n) @ (n x n) product on the CPU in `dtype`, in TFLOP/s, over about `seconds`.

    The fastest, not the median: a peak, and other processes sharing the cores only slow products down.
    1024 is large enough to reach matmul speed and small enough (2.1 GFLOP, ~0.1 s at 25 GFLOP/s) to repeat."""
    g = torch.Generator().manual_seed(0)  # its own stream: training's global RNG state must not move
    a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))  # random, not zeros: no shortcut paths
    a @ b  # warm-up: thread pool, packing buffers
    best, deadline = float("inf"), time.perf_counter() + seconds
    while best == float("inf") or time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e12


def cpu_peak(precision: str = "bf16") -> Peak:
    """This process's CPU matmul peak at its current torch thread count (Ray Train sets it per worker from
    train.cpus_per_worker), measured once per process and (precision, threads)."""
    return _measured_cpu_peak(precision, torch.get_num_threads())


@functools.lru_cache(maxsize=None)
def _measured_cpu_peak(precision: str, threads: int) -> Peak:
    tflops = matmul_tflops(DTYPES[precision])
    return Peak(tflops, f"measured CPU {precision} matmul peak, {threads} thread{'s' if threads > 1 else ''}")


def resolve_peak(device: torch.device, configured: Optional[float] = None, precision: str = "bf16") -> Peak:
    """The MFU denominator for a worker training on `device` (see the module docstring for the order)."""
    if configured is not None:
        return Peak(float(configured), "train.peak_tflops")
    if device.type == "cuda":
        return gpu_peak(torch.cuda.get_device_name(device))
    if device.type == "cpu":
        return cpu_peak(precision)
    return Peak(FALLBACK_TFLOPS, f"no peak known for device '{device.type}': A100's {FALLBACK_TFLOPS:g} assumed; "
                                 "set train.peak_tflops")
