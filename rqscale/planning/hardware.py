"""GPUs the planner knows: memory, dense bf16 peak, and the memory it leaves unplanned."""
from __future__ import annotations

from dataclasses import dataclass

from rqscale.utils.peak import gpu_peak

GIB = 2**30

# Memory the planner never hands to model states or activations, as a fraction of the GPU: the CUDA
# context and kernels (~0.5-1 GiB), NCCL buffers, DeepSpeed's communication buckets (ZeRO-2/3 reduce and
# all-gather buckets and ZeRO-3's prefetch: 5e8 / 5e7 elements by default), the soft cross-entropy's fp32
# scratch (2^26 elements a block on GPU, rqscale/tasks/stage2.py) and allocator fragmentation.
# 10% is 4 GiB on a 40 GB card and 8 GiB on an 80 GB one.
RESERVE_FRACTION = 0.10


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: int
    peak_flops: float  # dense bf16 tensor-core FLOP/s: rqscale/utils/peak.py's datasheet table, as training's MFU uses
    source: str


# Capacities are the datasheets' 40 / 80 GB, taken as GiB (nvidia-smi shows 40,960 / 81,920 MiB on A100
# SXM4 and 81,559 MiB on H100 SXM5; the reserve absorbs the difference).
GPUS = {
    "a100-40gb": GPU("a100-40gb", 40 * GIB, gpu_peak("A100").tflops * 1e12, "NVIDIA A100 datasheet: BF16 tensor core 312 TFLOPS dense, 40GB HBM2"),
    "a100-80gb": GPU("a100-80gb", 80 * GIB, gpu_peak("A100").tflops * 1e12, "NVIDIA A100 datasheet: BF16 tensor core 312 TFLOPS dense, 80GB HBM2e"),
    "h100-80gb": GPU("h100-80gb", 80 * GIB, gpu_peak("H100 SXM").tflops * 1e12,
                     "NVIDIA H100 datasheet, SXM: BF16 tensor core 1,979 TFLOPS with sparsity, 989 dense, 80GB HBM3"),
    # The H200 SXM is the H100's Hopper chip with more memory: the same tensor-core rates. nvidia-smi shows
    # 143,771 MiB (140.4 GiB) on the device tool's H200 (its KINDS.md, 2026-10-27); the reserve absorbs it.
    "h200-141gb": GPU("h200-141gb", 141 * GIB, gpu_peak("H200").tflops * 1e12,
                      "NVIDIA H200 datasheet, SXM: BF16 tensor core 1,979 TFLOPS with sparsity, 989 dense, 141GB HBM3e"),
}


def usable_bytes(gpu: GPU) -> int:
    """GPU memory the planner fills with model states and activations."""
    return int(gpu.memory_bytes * (1 - RESERVE_FRACTION))
