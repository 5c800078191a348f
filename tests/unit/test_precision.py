"""engine.precision=auto: bf16 on GPUs and on CPUs with native bf16, fp32 where bf16 would be emulated.
Both sides of the CPU branch are tested here by setting what the CPU probe answers."""
import pytest
import torch

from rqscale.config import load
from rqscale.engine import precision
from rqscale.engine.ds_config import deepspeed_config
from tests.conftest import DEBUG_STAGE2


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.resolve_precision("auto", torch.device("cpu")) == expected


def test_auto_on_a_gpu_is_bf16_and_explicit_choices_stay(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: pytest.fail("a GPU run does not ask the CPU"))
    assert precision.resolve_precision("auto", torch.device("cuda", 0)) == "bf16"
    for chosen in ("bf16", "fp32"):
        assert precision.resolve_precision(chosen, torch.device("cpu")) == chosen


def test_the_cpu_probe_answers_a_bool():
    assert precision.cpu_has_native_bf16() in (True, False)


def test_resolved_config_is_a_copy_and_deepspeed_refuses_unresolved_auto(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    cfg = load(DEBUG_STAGE2, check_files=False)
    assert cfg.engine.precision == "auto"
    resolved = precision.with_resolved_precision(cfg, torch.device("cpu"))
    assert resolved.engine.precision == "fp32" and cfg.engine.precision == "auto"
    assert deepspeed_config(resolved, 1, 1.0)["bf16"] == {"enabled": False}
    with pytest.raises(ValueError, match="engine.precision=auto reached the DeepSpeed config unresolved"):
        deepspeed_config(cfg, 1, 1.0)
