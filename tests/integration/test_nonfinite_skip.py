"""A non-finite loss is skipped through the real DeepSpeed engine: no weight moves, and the next
finite step trains normally; the guard stops a run after too many in a row."""
import pytest
import torch

from rqscale.config import batch_plan, load
from rqscale.data.pipeline import RankBatches
from rqscale.engine import init_distributed
from rqscale.train.stage2_engine import Stage2Engines
from rqscale.train.telemetry import NonFiniteGuard, NonFiniteLossError
from tests.conftest import DEBUG_STAGE2

pytestmark = pytest.mark.slow


def _weights(engines) -> torch.Tensor:
    from rqscale.engine import consolidated_state_dict

    return torch.cat([v.flatten().float() for v in consolidated_state_dict(engines.engine).values()])


def _adam_state(engines) -> dict:
    state = engines.optimizer.state
    return {f"{i}/{k}": v.detach().clone() for i, s in enumerate(state.values()) for k, v in s.items()}


def test_nan_step_is_skipped_then_training_continues(trained_stage1):
    cfg = load(DEBUG_STAGE2, [f"stage2.rqvae_checkpoint={trained_stage1[2] / 'rqvae.pt'}", "engine.precision=fp32",
                              "train.global_batch=16", "train.micro_batch=8", "train.grad_accum=2",
                              "stage2.loss.stochastic_codes=false"])  # NaN inputs cannot be sampled from
    init_distributed()
    engines = Stage2Engines(cfg, 1, torch.device("cpu"))
    data = RankBatches(cfg, 0, 1, batch_plan(cfg, 1)[1])
    engines.step(data.next_step(), 0)
    before = _weights(engines)
    poisoned = data.next_step()
    poisoned[1] = {"images": torch.full_like(poisoned[1]["images"], float("nan")), "cond": poisoned[1]["cond"]}
    moments = _adam_state(engines)
    metrics, taken = engines.step(poisoned, 1)
    assert float(taken) == 0.0 and not torch.isfinite(metrics["loss"])
    assert torch.equal(_weights(engines), before)  # the finite first micro-batch did not move anything either
    after = _adam_state(engines)  # the fused optimizer skipped its whole update: moments and step count too
    assert all(torch.equal(after[k], moments[k]) for k in moments)
    metrics, taken = engines.step(data.next_step(), 2)
    assert float(taken) == 1.0 and torch.isfinite(_weights(engines)).all() and not torch.equal(_weights(engines), before)

    guard = NonFiniteGuard(max_in_row=1)
    assert guard.check(float("nan"), 3) is True
    with pytest.raises(NonFiniteLossError, match="train.max_nonfinite_steps"):
        guard.check(float("inf"), 4)
