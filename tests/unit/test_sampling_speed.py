"""Sampling speed (issue 6, paper Fig. 4): rqscale.eval.speed.sampling_speed and `python -m rqscale.bench sample`.

Timings on shared CPUs are noisy, so only their consistency is checked, never that a larger batch is
faster per image (Fig. 4's trend holds on a GPU, not necessarily on 2 busy cores).
"""
import dataclasses
import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch

from rqscale.config import RQTransformerConfig
from rqscale.eval.speed import sampling_speed
from rqscale.models import RQTransformer
from rqscale.sampling import SamplingParams

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU = torch.device("cpu")
TINY = RQTransformerConfig(embed_dim=32, num_heads=2, spatial_layers=1, depth_layers=1, num_classes=3)


def tiny(condition: str = "class") -> RQTransformer:
    torch.manual_seed(0)
    return RQTransformer(dataclasses.replace(TINY, condition=condition), (2, 2, 2), 16, 8).eval()


@pytest.mark.parametrize("condition", ["class", "none"])
def test_one_consistent_entry_per_batch(condition):
    rows = sampling_speed(tiny(condition), [2, 5], CPU, torch.float32, repeats=2)
    assert [r["batch"] for r in rows] == [2, 5]
    for r in rows:
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("seconds", "seconds_per_image", "images_per_second"))
        assert r["seconds_per_image"] * r["batch"] == pytest.approx(r["seconds"])
        assert r["images_per_second"] * r["seconds_per_image"] == pytest.approx(1.0)


def test_decode_gets_every_call_codes_and_is_timed():
    seen = []

    def decode(codes: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(codes.shape))
        return torch.zeros(len(codes), 3, 4, 4)

    sampling_speed(tiny(), [3], CPU, torch.float32, repeats=2, decode=decode)
    assert seen == [(3, 4, 2)] * 3  # one small warm-up, then 2 timed repeats
    slow = sampling_speed(tiny(), [3], CPU, torch.float32, decode=lambda codes: time.sleep(0.2))
    assert slow[0]["seconds"] >= 0.2


def test_other_dtype_leaves_the_model_alone_and_guidance_runs():
    model = tiny()
    rows = sampling_speed(model, [2], CPU, torch.bfloat16, params=SamplingParams(top_k=4, cfg_scale=2.0))
    assert rows[0]["seconds"] > 0 and next(model.parameters()).dtype == torch.float32


def test_text_model_is_refused_clearly():
    with pytest.raises(ValueError, match="text-conditional"):
        sampling_speed(tiny("text"), [2], CPU, torch.float32)


@pytest.mark.slow
def test_bench_cli_prints_per_batch_speed_and_scaling():
    cmd = [sys.executable, "-m", "rqscale.bench", "sample", "--config", "configs/debug/stage2.yaml",
           "--batches", "2", "4", "--batch", "2"]
    # One thread: on 2 shared cores, two OpenMP threads stall at every op's barrier (minutes, not seconds).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "s/image by batch" in done.stdout and "batching: s/image at 4 / at 2" in done.stdout
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["batch"] for r in result["batches"]] == [2, 4]
    assert set(result["batches"][0]) == {"batch", "seconds", "seconds_per_image", "images_per_second"}
    assert result["batch_scaling"]["seconds_per_image_ratio"] > 0 and "cores" in result["machine"]
    assert result["cache_speedup"] > 0 and result["fp32_images_per_s"] > 0


def test_bench_cli_times_draft_and_revise_against_ar_for_a_contextual_config():
    cmd = [sys.executable, "-m", "rqscale.bench", "sample", "--config", "configs/debug/contextual.yaml", "--batch", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "AR sampler, same width" in done.stdout and "(paper Table 4, A100: 3.25x)" in done.stdout
    result = json.loads(done.stdout.strip().splitlines()[-1])
    rows = result["draft_and_revise"]
    assert [r["draft_steps"] for r in rows] == [8, 32, 64] and result["ar_seconds_per_sample"] > 0
    # more draft steps, more spatial passes: the time grows with T_draft as in Table 4
    assert rows[0]["seconds_per_sample"] < rows[2]["seconds_per_sample"]
    assert all(r["vs_ar"] == pytest.approx(r["seconds_per_sample"] / result["ar_seconds_per_sample"]) for r in rows)
