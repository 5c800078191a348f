"""Residual-quantizer encode throughput vs this machine's matmul peak (issue: quantizer benchmark).

Encoding is D nearest-code searches, each one (N x n_z) @ (n_z x K) product plus an argmin, so it
should run at matmul speed. We report achieved distance FLOP/s over the best fp32 matmul FLOP/s
measured in the same run (and over bf16, for reference).
"""
from __future__ import annotations

import json

import torch

from rqscale.bench.common import machine, matmul_flops
from rqscale.utils.timing import time_fn
from rqscale.quantizer import LocalCollective, ResidualQuantizer


def run(num_codes: int = 16384, dim: int = 256, depth: int = 4, vectors: int = 8192, repeats: int = 5, device: str = "cpu") -> dict:
    dev = torch.device(device)
    torch.manual_seed(0)
    rq = ResidualQuantizer(num_codes, dim, depth, collective=LocalCollective()).to(dev).eval()
    z = torch.randn(vectors, dim, device=dev)
    seconds = time_fn(lambda: rq.encode(z), dev, repeats=repeats)
    flops = depth * 2.0 * vectors * num_codes * dim
    peak32 = max(matmul_flops(vectors, dim, num_codes, torch.float32, dev, repeats),
                 matmul_flops(2048, 2048, 2048, torch.float32, dev, repeats))
    peak16 = max(matmul_flops(vectors, dim, num_codes, torch.bfloat16, dev, repeats),
                 matmul_flops(2048, 2048, 2048, torch.bfloat16, dev, repeats))
    achieved = flops / seconds
    return {
        "benchmark": "quantizer.encode",
        "machine": machine(),
        "shape": {"K": num_codes, "n_z": dim, "D": depth, "vectors": vectors},
        "encode_seconds": seconds,
        "vectors_per_second": vectors / seconds,
        "distance_gflops": achieved / 1e9,
        "matmul_fp32_gflops": peak32 / 1e9,
        "matmul_bf16_gflops": peak16 / 1e9,
        "ratio_vs_fp32_peak": achieved / peak32,
        "ratio_vs_bf16_peak": achieved / peak16,
    }


def report(result: dict) -> str:
    r = result
    return (
        f"quantizer encode  K={r['shape']['K']} n_z={r['shape']['n_z']} D={r['shape']['D']} N={r['shape']['vectors']}\n"
        f"  machine: {r['machine']}\n"
        f"  encode: {r['encode_seconds'] * 1e3:.1f} ms  ->  {r['vectors_per_second']:,.0f} vectors/s\n"
        f"  distance FLOP/s: {r['distance_gflops']:.1f} GFLOP/s\n"
        f"  matmul peak (same run): fp32 {r['matmul_fp32_gflops']:.1f} GFLOP/s, bf16 {r['matmul_bf16_gflops']:.1f} GFLOP/s\n"
        f"  ratio achieved / fp32 peak: {r['ratio_vs_fp32_peak']:.2f}   (goal >= 0.60)\n"
        f"  ratio achieved / bf16 peak: {r['ratio_vs_bf16_peak']:.2f}\n"
        f"{json.dumps(r)}"
    )
