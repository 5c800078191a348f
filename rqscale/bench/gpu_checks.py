"""The arithmetic and the verdicts of the one-GPU smoke run (rqscale.bench.gpu_smoke), apart from any GPU
so that they are unit-tested on CPU: the GPU's bf16 peak from its name, steady-state throughput from a
run's metrics.jsonl, MFU, planned against measured memory, and which SDPA kernel attention ran on.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import Iterable, Optional

from rqscale.planning.hardware import GIB, GPUS

# torch.cuda.get_device_name() -> the planner's GPU (rqscale/planning/hardware.py). Names as nvidia-smi
# prints them; only the SXM parts carry the datasheet peaks listed there. PCIe / NVL H100 and H200 have
# lower clocks (H100 PCIe: 756 dense bf16 TFLOP/s, NVIDIA H100 datasheet), so they are not matched:
# pass --peak-tflops for them.
GPU_NAMES = (
    (r"NVIDIA H200", "h200-141gb"),
    (r"NVIDIA H100 80GB HBM3", "h100-80gb"),
    (r"NVIDIA A100[- ]SXM4[- ]80GB|NVIDIA A100 80GB PCIe", "a100-80gb"),  # A100 PCIe keeps SXM's 312 (A100 datasheet)
    (r"NVIDIA A100[- ](SXM4|PCIE)[- ]40GB", "a100-40gb"),
)
MFU_GOAL = 0.45  # issue goal for a ~480M RQ-Transformer on one H100/H200-class chip
MEMORY_TOLERANCE = 0.15  # issue goal: planned peak within 15% of measured


class UnknownGPUError(ValueError):
    """No known bf16 peak for this GPU."""


def planner_gpu(device_name: str) -> Optional[str]:
    """The planner's key for a CUDA device name (e.g. 'NVIDIA H200' -> 'h200-141gb'), None if unknown."""
    for pattern, key in GPU_NAMES:
        if re.fullmatch(pattern, device_name.strip()):
            return key
    return None


def peak_flops(device_name: str, override_tflops: Optional[float] = None) -> tuple:
    """(dense bf16 peak FLOP/s, where the number comes from). An override wins; an unknown GPU raises."""
    if override_tflops is not None:
        return override_tflops * 1e12, "--peak-tflops"
    key = planner_gpu(device_name)
    if key is None:
        known = ", ".join(pattern for pattern, _ in GPU_NAMES)
        raise UnknownGPUError(f"no bf16 peak known for GPU '{device_name}' (known: {known}): pass --peak-tflops N from its datasheet")
    return GPUS[key].peak_flops, GPUS[key].source


def read_metrics(path: str) -> list:
    """The per-step records of a run's metrics.jsonl, in file order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def steady_state(records: list, global_batch: int, warmup_steps: int) -> dict:
    """Images/s over the steps from `warmup_steps` on: their images over their summed wall time.

    Each record's time is global_batch / images_per_s (rqscale/train/telemetry.py). Records that share
    one logging window's mean time (steps read back together) sum to that window's time, so a warm-up
    that ends on a window boundary (train.log_every) leaves whole windows only."""
    steady = [r for r in records if r["step"] >= warmup_steps]
    if not steady:
        raise ValueError(f"no step at or after warm-up step {warmup_steps} in {len(records)} records: run more steps")
    seconds = sum(global_batch / r["images_per_s"] for r in steady)
    return {"steps": len(steady), "seconds": seconds, "images_per_s": len(steady) * global_batch / seconds,
            "first_step_s": global_batch / records[0]["images_per_s"] if records else None}


def mfu(flops_per_image: float, images_per_s: float, peak: float) -> float:
    """Model FLOPs utilisation: model FLOPs per second over the dense peak (Kaplan et al. 2020 / PaLM App. B
    convention, as rqscale/train/flops.py counts them: no recompute for activation checkpointing)."""
    return flops_per_image * images_per_s / peak


def finite_losses(records: list, key: str = "loss") -> bool:
    return bool(records) and all(isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) for r in records)


def peak_memory_bytes(records: list) -> float:
    """Largest `mem_gb` of the run (torch.cuda.max_memory_allocated / 1e9 on a GPU), in bytes."""
    return max(r["mem_gb"] for r in records) * 1e9


def memory_comparison(measured_bytes: float, planned_bytes: float, tolerance: float = MEMORY_TOLERANCE) -> dict:
    """Planned against measured peak, both in GiB; `within` when |planned - measured| <= tolerance x measured."""
    error = (planned_bytes - measured_bytes) / measured_bytes
    return {"measured_gib": measured_bytes / GIB, "planner_gib": planned_bytes / GIB,
            "planner_over_measured": planned_bytes / measured_bytes, "relative_error": error,
            "within_tolerance": abs(error) <= tolerance, "tolerance": tolerance}


# ---- which kernel scaled_dot_product_attention dispatched to ---------------------------------------
# The aten ops SDPA calls per backend (forward names; backward ones end in _backward). On CPU, fused
# attention is `_scaled_dot_product_flash_attention_for_cpu`.
SDPA_OPS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_efficient_attention": "memory-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash-cpu",
    "aten::_scaled_dot_product_attention_math": "math",
}
# cuDNN's attention is a fused kernel too (FlashAttention-style, no score matrix in memory), so it passes;
# it is reported by name because the planner's activation model assumes flash / memory-efficient.
FUSED_GPU = ("flash", "memory-efficient", "cudnn")


def sdpa_backends(op_names: Iterable[str]) -> dict:
    """{backend: calls} from the op names a profiler recorded."""
    return dict(Counter(SDPA_OPS[name] for name in op_names if name in SDPA_OPS))


def sdpa_verdict(counts: dict, device_type: str) -> dict:
    """Pass when attention ran on a fused kernel only: flash / memory-efficient / cudnn on CUDA, the fused
    CPU kernel on CPU. Any math-path call fails (it keeps the whole score matrix: memory and speed)."""
    fused = FUSED_GPU if device_type == "cuda" else ("flash-cpu",)
    if not counts:
        return {"backend": None, "calls": counts, "pass": False, "reason": "no scaled_dot_product_attention call was recorded"}
    if counts.get("math"):
        return {"backend": "math", "calls": counts, "pass": False,
                "reason": f"{counts['math']} attention calls fell back to the math path (check dtype, head size and dropout support)"}
    used = sorted(counts, key=counts.get, reverse=True)
    ok = all(b in fused for b in used)
    return {"backend": used[0], "calls": counts, "pass": ok,
            "reason": None if ok else f"attention ran on {used} on {device_type}, expected one of {list(fused)}"}
