"""engine.precision=auto: bf16 where the hardware computes it, fp32 where bf16 would only be emulated.

A.3 trains in mixed precision on GPUs; every GPU rqscale targets (A100, H100, A10G, L4) has bf16 units,
so `auto` is bf16 there. A CPU computes bf16 matmuls natively only with AMX or AVX512-BF16; without
them oneDNN emulates bf16 and a step gets slower, not faster: on the 2-core Ice Lake machines that run
this project's CI (AVX512, no BF16), the debug stage-2 step took 3x longer in bf16 than in fp32 (19 vs
55-63 images/s, measured Nov 2026). `auto` is resolved on each worker, for the device it trains on.
"""
from __future__ import annotations

import dataclasses

import torch

from rqscale.config import Config


def cpu_has_native_bf16() -> bool:
    """AMX tiles or AVX512-BF16 on this CPU (torch's own CPU feature probes; absent on other architectures)."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_precision(precision: str, device: torch.device) -> str:
    """engine.precision as the worker runs it: bf16 or fp32."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or cpu_has_native_bf16() else "fp32"


def with_resolved_precision(cfg: Config, device: torch.device) -> Config:
    """A copy of cfg whose engine.precision is concrete for `device` (what the saved config then records)."""
    engine = dataclasses.replace(cfg.engine, precision=resolve_precision(cfg.engine.precision, device))
    return dataclasses.replace(cfg, engine=engine)
