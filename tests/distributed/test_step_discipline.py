"""GPU discipline of the real training step, proven on CPU: 2 gloo ranks run the real `TrainingLoop` (the
loop every Ray Train worker runs) for both stages, under the probes of tests/distributed/_step_probe.py.

On CPU the engine's device *is* the CPU, so "the tensor is on the engine's device" holds trivially.
What is checked instead cannot pass by accident:
- every collective rqscale issues itself comes through DeviceCollectives, built with the engine's
  device, and only with tensors on that device (DeepSpeed's own collectives are its business);
- no tensor factory in a training step is called from rqscale code without a device (on a GPU such a
  tensor lands on the CPU: the bug class of a host flag fed to an NCCL all-reduce);
- a non-logging step makes no host sync at all (.item(), bool(), float(), int(), .tolist(), ...).

Steps: 0 reads metrics back once (the first progress line), 1 and 2 are plain steps, 3 logs and
checkpoints. Stage 1's discriminator is switched on from step 2, and stage 2 drops conditions and
accumulates two micro-batches, so every branch of both steps runs.
"""
import json
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import DEBUG_STAGE1, DEBUG_STAGE2
from tests.distributed._step_probe import run_rank

STEPS, WORLD = 4, 2
PLAIN_STEPS = {1, 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    from rqscale.config import load
    from rqscale.models import RQVAE

    tmp = tmp_path_factory.mktemp("probe")
    rqvae = tmp / "rqvae.pt"  # weights do not matter here, only the step's mechanics
    torch.save(RQVAE(load(DEBUG_STAGE2, check_files=False).rqvae).state_dict(), rqvae)
    common = [f"run.output_dir={tmp / 'runs'}", f"train.num_workers={WORLD}", f"train.max_steps={STEPS}",
              f"train.log_every={STEPS}", f"checkpoint.every_steps={STEPS}", "data.bundled_set=digits",
              "engine.precision=bf16"]  # the GPU path's precision, whatever this CPU would pick for `auto`
    stages = {
        "stage1": (DEBUG_STAGE1, [*common, "run.name=probe-s1", "train.global_batch=16", "train.micro_batch=8",
                                  "stage1.loss.disc_start=2"]),
        "stage2": (DEBUG_STAGE2, [*common, "run.name=probe-s2", f"stage2.rqvae_checkpoint={rqvae}", "train.global_batch=32",
                                  "train.micro_batch=8", "train.grad_accum=2", "stage2.model.cond_dropout=0.5"]),
    }
    mp.spawn(run_rank, args=(WORLD, free_port(), stages, str(tmp)), nprocs=WORLD, join=True)
    return [json.load(open(tmp / f"rank{r}.json")) for r in range(WORLD)]


def _each(probed):
    for rank, report in enumerate(probed):
        for stage, seen in report.items():
            yield f"rank {rank} {stage}", seen


@pytest.mark.slow
def test_rqscale_collectives_all_go_through_the_device_helper(probed):
    for label, seen in _each(probed):
        direct = [c for c in seen["collectives"] if c["kind"] == "rqscale"]
        assert not direct, f"{label}: collectives issued around the helper: {direct[:5]}"
        helped = [c for c in seen["collectives"] if c["kind"] == "helper"]
        in_plain_steps = {c["step"] for c in helped if c["name"] == "all_reduce"}
        assert PLAIN_STEPS <= in_plain_steps, f"{label}: the step's finiteness flag was not reduced through the helper"
        for call in helped:
            assert call["helper_device"] == "cpu", call  # the engine's device, given by the TrainingLoop
            assert all(d == call["helper_device"] for d in call["devices"]), call


@pytest.mark.slow
def test_no_tensor_made_on_the_default_device_in_a_step(probed):
    for label, seen in _each(probed):
        assert not seen["factories"], f"{label}: tensor factories without a device: {seen['factories'][:5]}"


@pytest.mark.slow
def test_no_host_sync_in_a_non_logging_step(probed):
    for label, seen in _each(probed):
        in_plain = [s for s in seen["syncs"] if s["step"] in PLAIN_STEPS and s["kind"] != "data"]
        assert not in_plain, f"{label}: host syncs in non-logging steps: {in_plain[:8]}"
        at_logging = [s for s in seen["syncs"] if s["step"] == STEPS - 1]
        assert at_logging, f"{label}: the probe saw no sync even at the logging step (is it working?)"
