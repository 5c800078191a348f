"""Sampling controls: temperature, top-k, top-p per depth; argument checks; rejection selection; the
SampleRequest that rqscale.sample and rqscale.evaluate share."""
import pytest
import torch

from rqscale.sampling import SampleRequest, SamplingParams, filter_logits
from rqscale.sampling.rejection import candidates_needed, select


def test_top_k_keeps_k_largest():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0, 5.0]])
    kept = torch.isfinite(filter_logits(logits, 1.0, 2, None))
    assert kept.tolist() == [[False, True, False, False, True]]


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(filter_logits(probs.log(), 1.0, None, 0.75))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.75 <= 0.8
    kept = torch.isfinite(filter_logits(probs.log(), 1.0, None, 0.5))
    assert kept.tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_logits(probs.log(), 1.0, None, 1.0)).all()


def test_temperature_then_top_k_then_top_p():
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    # top-k first renormalises to (0.57, 0.43), so top-p 0.5 keeps 1 code; top-p first would keep 2.
    assert torch.isfinite(filter_logits(logits, 1.0, 2, 0.5)).sum() == 1
    # temperature first: at T=4 the distribution flattens to ~(0.29, 0.27, 0.24, 0.21), top-p 0.5 keeps 2.
    assert torch.isfinite(filter_logits(logits, 4.0, None, 0.5)).sum() == 2
    out = filter_logits(logits, 0.5, 3, None)
    assert torch.allclose(out[0, :3], logits[0, :3] / 0.5) and torch.isinf(out[0, 3])


def test_per_depth_settings_resolve():
    p = SamplingParams(temperature=[1.0, 0.9, 0.8, 0.7], top_k=[64, 32, 16, 8], top_p=0.95).resolve(4, 128)
    assert p.per_depth[2] == (0.8, 16, 0.95)
    with pytest.raises(ValueError, match="D=4"):
        SamplingParams(top_k=[1, 2]).resolve(4, 128)


@pytest.mark.parametrize("kwargs, words", [
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_k=-1), "top_k"),
    (dict(top_k=1000), "top_k"), (dict(temperature=0.0), "temperature"), (dict(cfg_scale=-1.0), "cfg_scale"),
])
def test_bad_sampling_parameters_are_rejected(kwargs, words):
    with pytest.raises(ValueError, match=words):
        SamplingParams(**kwargs).resolve(4, 128)


class Brightness(torch.nn.Module):
    """Two classes: 'dark' (0) and 'bright' (1) by mean intensity."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3)) * 10
        return torch.stack([-m, m], dim=1)


def test_rejection_keeps_most_confident_candidates(tmp_path):
    path = tmp_path / "clf.pt"
    torch.jit.script(Brightness()).save(str(path))
    from rqscale.sampling.rejection import load_classifier

    clf = load_classifier(str(path))
    images = torch.linspace(-1, 1, 8).view(8, 1, 1, 1).expand(8, 3, 4, 4)
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    keep = select(images, labels, clf, {1: 2, 0: 2})
    assert keep.tolist() == [2, 3, 4, 5]  # brightest of label 1 (idx 2, 3), darkest of label 0 (idx 4, 5)
    assert candidates_needed(10, 0.25) == 40
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_classifier(str(tmp_path / "nope.pt"))


@pytest.mark.parametrize("kwargs, words", [
    (dict(num_samples=0), "--num-samples must be >= 1"), (dict(params=SamplingParams(top_p=(0.0,))), r"--top-p must be in \(0, 1\], got \[0.0\]"),
    (dict(params=SamplingParams(top_k=(64, -1))), "--top-k must be >= 0"), (dict(params=SamplingParams(temperature=0)), "--temperature"),
    (dict(params=SamplingParams(cfg_scale=-1.0)), "--cfg-scale"), (dict(batch_size=0), "--batch-size"),
    (dict(acceptance_rate=0.5), "needs --classifier"), (dict(acceptance_rate=1.5, classifier="c.pt"), "--acceptance-rate"),
    (dict(class_labels=[1], captions=["a seven"]), "not both"),
])
def test_sample_request_errors_name_the_flag(kwargs, words):
    with pytest.raises(ValueError, match=words):
        SampleRequest(**{"checkpoint": "model.pt", "num_samples": 2, **kwargs})


def test_sample_request_is_frozen_and_its_params_resolve_to_copies():
    request = SampleRequest("model.pt", 2, class_labels=[3, 7], params=SamplingParams((0.9,), (64, 32, 16, 8), (1.0,)))
    assert request.class_labels == (3, 7)
    with pytest.raises(AttributeError):
        request.seed = 1
    resolved = request.params.resolve(4, 128)  # one value in a sequence applies to every depth
    assert resolved.per_depth == [(0.9, 64, 1.0), (0.9, 32, 1.0), (0.9, 16, 1.0), (0.9, 8, 1.0)]
    assert request.params.per_depth == [] and request.settings()["top_k"] == (64, 32, 16, 8)


def test_planned_conditions_cycle_and_check_against_the_model():
    from rqscale.config import load
    from rqscale.sampling.generate import planned_conditions
    from tests.conftest import DEBUG_STAGE2

    cfg = load(DEBUG_STAGE2, check_files=False)
    assert cfg.stage2.model.condition == "class"
    assert planned_conditions(SampleRequest("m.pt", 5, class_labels=[1, 2]), cfg, 5) == ((1, 2, 1, 2, 1), None)
    with pytest.raises(ValueError, match=r"unknown class label\(s\) \[12\]"):
        planned_conditions(SampleRequest("m.pt", 2, class_labels=[1, 12]), cfg, 2)
    with pytest.raises(ValueError, match="pass --class-label"):
        planned_conditions(SampleRequest("m.pt", 2), cfg, 2)


def test_guidance_needs_a_model_that_learned_its_null_condition():
    from rqscale.config import load
    from rqscale.sampling import SampleRequest
    from tests.conftest import DEBUG_STAGE2, UNCONDITIONAL

    cfg = load(DEBUG_STAGE2, list(UNCONDITIONAL), check_files=False)  # cond_dropout 0: no null class learned
    request = SampleRequest("rqtransformer.pt", 2, class_labels=(1,), params=SamplingParams(cfg_scale=3.0))
    with pytest.raises(ValueError, match="cond_dropout > 0"):
        request.check_model(cfg)
