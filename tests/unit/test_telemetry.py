"""Telemetry writes what it claims (jsonl, TensorBoard scalars and images, progress lines), computes
throughput and MFU right, stays silent on non-zero ranks; the MFU denominator resolves per worker
(explicit > GPU datasheet by name > measured CPU peak); NonFiniteGuard skips, resets and aborts."""
import io
import json
import math
import time

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rqscale.train.telemetry import NonFiniteGuard, NonFiniteLossError, Telemetry, memory_gb
from rqscale.utils import peak as peaks

RATES = dict(world_size=4, flops_per_sample=2.0e12, tokens_per_sample=256, peak_tflops=312.0)


def telemetry(log_dir, lines=None, enabled=True, **kw) -> Telemetry:
    return Telemetry(str(log_dir), enabled=enabled, log_every=2, keys=("loss", "depth1"),
                     log=(lines.append if lines is not None else print), **RATES, **kw)


def read_jsonl(path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def events(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_throughput_and_mfu_arithmetic(tmp_path):
    with telemetry(tmp_path, []) as tel:
        out = tel.step(0, {"loss": 1.5}, samples=64, seconds=2.0)
    assert out["images_per_s"] == pytest.approx(32.0)
    assert out["tokens_per_s"] == pytest.approx(32.0 * 256)
    # 2 TFLOP/sample * 64 samples / 2 s / 4 workers = 16 TFLOP/s per worker
    assert out["tflops_per_worker"] == pytest.approx(16.0)
    assert out["mfu"] == pytest.approx(16.0 / 312.0)
    assert out["step"] == 0 and out["loss"] == 1.5


def test_memory_is_this_process_resident_set_on_cpu():
    import re

    block = torch.ones(300_000_000 // 4)  # 300 MB, touched: the process holds at least that much
    with open("/proc/self/status") as f:
        vm_rss_gb = int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) * 1024 / 1e9  # the kernel's own figure
    assert memory_gb() == pytest.approx(vm_rss_gb, rel=0.05)
    assert memory_gb() >= 0.3
    del block


def test_jsonl_records_every_step_and_appends_on_resume(tmp_path):
    with telemetry(tmp_path, []) as tel:
        for step in range(3):
            tel.step(step, {"loss": torch.tensor(1.0 / (step + 1)), "lr": 1e-3}, samples=8, seconds=0.5)
    with telemetry(tmp_path, []) as tel:  # a resumed run, same directory
        tel.step(3, {"loss": 0.2}, samples=8, seconds=0.5)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert records[1]["loss"] == pytest.approx(0.5) and records[0]["lr"] == 1e-3
    assert all(r["mem_gb"] > 0 and r["images_per_s"] == pytest.approx(16.0) for r in records)


def test_resume_step_drops_records_written_after_the_checkpoint(tmp_path):
    with telemetry(tmp_path, []) as tel:
        for step in range(5):
            tel.step(step, {"loss": float(step)}, samples=8, seconds=1.0)
    # TensorBoard reads event files in name order: <creation second>.<host>.<pid>.<per-process counter>. A real
    # resume is another process in a later second; in one process within one second, counter 10 sorts before 9.
    time.sleep(1.0 - time.time() % 1.0 + 0.01)
    with telemetry(tmp_path, [], resume_step=3) as tel:  # crashed after step 4, checkpoint at 3
        tel.step(3, {"loss": 30.0}, samples=8, seconds=1.0)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in records] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 30.0)]
    loss = events(tmp_path).Scalars("train/loss")  # TensorBoard hides the stale steps 3 and 4 too
    assert [(e.step, e.value) for e in loss] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 30.0)]


def test_tensorboard_scalars_are_readable_back(tmp_path):
    with telemetry(tmp_path, []) as tel:
        for step in range(3):
            tel.step(step, {"loss": 2.0 - step, "g/recon": 0.1 * step, "lr": 5e-4, "note": "text"}, samples=8, seconds=1.0)
    acc = events(tmp_path)
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/g/recon", "optim/lr", "perf/mfu", "perf/images_per_s", "perf/mem_gb"} <= tags
    assert not any("note" in t or t.endswith("/step") for t in tags)
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [0, 1, 2]
    assert [e.value for e in loss] == pytest.approx([2.0, 1.0, 0.0])
    assert acc.Scalars("perf/images_per_s")[0].value == pytest.approx(8.0)


def test_progress_line_every_log_every_steps(tmp_path):
    lines = []
    with telemetry(tmp_path, lines) as tel:
        for step in range(4):
            tel.step(step, {"loss": 1.25, "depth1": 0.5, "lr": 0.1}, samples=64, seconds=2.0)
        tel.step(4, {"loss": 1.0}, samples=64, seconds=2.0, force_log=False)
        tel.step(5, {"loss": 1.0}, samples=64, seconds=2.0, force_log=True)
    assert [line.split()[1] for line in lines] == ["0", "2", "4", "5"]
    first = lines[0]
    assert "loss 1.2500" in first and "depth1 0.5000" in first and "lr" not in first
    assert "images/s 32.0" in first and f"MFU {100 * 16 / 312:.1f}%" in first and first.endswith(" GB")


def test_image_is_readable_back_from_events(tmp_path):
    pixels = np.zeros((12, 20, 3), dtype=np.uint8)
    pixels[..., 0] = np.arange(20, dtype=np.uint8)[None] * 12
    pixels[..., 1] = np.arange(12, dtype=np.uint8)[:, None] * 20
    png = tmp_path / "grid.png"
    Image.fromarray(pixels).save(png)
    with telemetry(tmp_path / "run", []) as tel:
        tel.image("samples", str(png), step=7)
    stored = events(tmp_path / "run").Images("samples")
    assert [e.step for e in stored] == [7] and (stored[0].width, stored[0].height) == (20, 12)
    decoded = np.asarray(Image.open(io.BytesIO(stored[0].encoded_image_string)).convert("RGB"))
    assert np.array_equal(decoded, pixels)


def test_disabled_telemetry_writes_nothing(tmp_path):
    lines = []
    tel = telemetry(tmp_path / "rank1", lines, enabled=False)
    out = tel.step(0, {"loss": 1.0}, samples=8, seconds=1.0, force_log=True)
    tel.image("samples", str(tmp_path / "missing.png"), step=0)
    tel.flush()
    tel.close()
    assert out == {"step": 0, "loss": 1.0}
    assert lines == [] and not (tmp_path / "rank1").exists()


# ---- the MFU denominator ----------------------------------------------------------------------------
@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H200", 989), ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA A100-SXM4-80GB", 312),
    ("NVIDIA A100 80GB PCIe", 312), ("NVIDIA A10G", 125), ("NVIDIA L4", 121), ("Tesla V100-SXM2-32GB", 125),
])
def test_gpu_peak_by_device_name(name, tflops):
    found = peaks.gpu_peak(name)
    assert found.tflops == tflops and "datasheet" in found.source and name in found.source


def test_unknown_gpu_falls_back_to_a100_and_says_so():
    found = peaks.gpu_peak("NVIDIA L40S")  # not the L4: the name only starts like it
    assert found.tflops == 312 and "unknown GPU 'NVIDIA L40S'" in found.source and "train.peak_tflops" in found.source


def test_cuda_device_is_looked_up_by_its_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert peaks.resolve_peak(torch.device("cuda", 0)).tflops == 989


def test_explicit_peak_wins_on_every_device(monkeypatch):
    monkeypatch.setattr(peaks, "cpu_peak", lambda precision="bf16": pytest.fail("measured despite train.peak_tflops"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: pytest.fail("looked up despite train.peak_tflops"))
    for device in (torch.device("cpu"), torch.device("cuda", 0)):
        assert peaks.resolve_peak(device, 42.5) == peaks.Peak(42.5, "train.peak_tflops")


def test_cpu_peak_is_measured_once_and_plausible():
    rng = torch.get_rng_state()
    first = peaks.resolve_peak(torch.device("cpu"), None, "bf16")
    assert torch.equal(torch.get_rng_state(), rng)  # training's dropout / stochastic codes are unaffected
    # Between 1 GFLOP/s (any CPU of the last decade, even emulating bf16) and 1 PFLOP/s (no CPU comes close).
    assert 1e-3 < first.tflops < 1e3
    assert first.source.startswith(f"measured CPU bf16 matmul peak, {torch.get_num_threads()} thread")
    assert peaks.resolve_peak(torch.device("cpu"), None, "bf16") is first  # cached: once per worker


def test_planner_gpus_use_the_same_datasheet_table():
    from rqscale.planning.hardware import GPUS

    assert GPUS["a100-80gb"].peak_flops == peaks.gpu_peak("NVIDIA A100-SXM4-80GB").tflops * 1e12
    assert GPUS["h200-141gb"].peak_flops == peaks.gpu_peak("NVIDIA H200").tflops * 1e12


def test_peak_defaults_to_resolving_and_is_named_once_in_the_log(tmp_path):
    from rqscale.config import ConfigError, load
    from tests.conftest import DEBUG_STAGE2

    assert load(DEBUG_STAGE2, ["stage2.rqvae_checkpoint=null"], check_files=False).train.peak_tflops is None
    with pytest.raises(ConfigError, match="train.peak_tflops"):
        load(DEBUG_STAGE2, ["stage2.rqvae_checkpoint=null", "train.peak_tflops=0"], check_files=False)
    lines = []
    with telemetry(tmp_path, lines, peak_source="measured CPU bf16 matmul peak, 2 threads") as tel:
        tel.step(0, {"loss": 1.0}, samples=64, seconds=2.0)
        tel.step(2, {"loss": 1.0}, samples=64, seconds=2.0)
        assert tel.peak == {"peak_tflops": 312.0, "peak_source": "measured CPU bf16 matmul peak, 2 threads"}
    assert lines[0] == "MFU against measured CPU bf16 matmul peak, 2 threads: 312 TFLOP/s per worker"
    assert sum("MFU against" in line for line in lines) == 1


# ---- NonFiniteGuard -------------------------------------------------------------------------------
def test_guard_skips_non_finite_and_resets_on_finite():
    guard = NonFiniteGuard(max_in_row=2)
    assert guard.check(1.0, 0) is False
    assert guard.check(float("nan"), 1) is True
    assert guard.check(torch.tensor(float("inf")), 2) is True
    assert guard.check(0.5, 3) is False  # the streak resets
    assert guard.check(-math.inf, 4) is True and guard.check(float("nan"), 5) is True
    assert (guard.skipped_total, guard.in_row) == (4, 2)


def test_guard_raises_after_more_than_max_in_row():
    guard = NonFiniteGuard(max_in_row=2)
    guard.check(float("nan"), 10)
    guard.check(float("nan"), 11)
    with pytest.raises(NonFiniteLossError, match="train.max_nonfinite_steps=2") as err:
        guard.check(float("nan"), 12)
    assert isinstance(err.value, RuntimeError)
    assert "step 12" in str(err.value) and "learning rate" in str(err.value)
    with pytest.raises(NonFiniteLossError):
        NonFiniteGuard(max_in_row=0).check(float("inf"), 0)  # 0: no non-finite loss tolerated


def test_guard_state_round_trip_keeps_the_streak():
    guard = NonFiniteGuard(max_in_row=2)
    for loss in (float("nan"), 1.0, float("nan"), float("nan")):
        guard.check(loss, 0)
    resumed = NonFiniteGuard(max_in_row=2)
    resumed.load_state_dict(json.loads(json.dumps(guard.state_dict())))  # as a checkpoint stores it
    assert (resumed.skipped_total, resumed.in_row) == (3, 2)
    with pytest.raises(NonFiniteLossError):
        resumed.check(float("nan"), 1)
