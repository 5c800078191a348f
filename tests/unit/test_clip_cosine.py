"""The per-image CLIP cosine that evaluation's CLIP score and CLIP re-ranking share, checked against
torchmetrics' CLIPScore (an independent implementation) on a small local CLIP model; best_of's choice."""
import functools

import pytest
import torch

from rqscale.eval.clip_score import _load_local, clip_cosines, merge_clip
from rqscale.sampling.rerank import best_of, repeated
from tests.integration.test_evaluate import save_tiny_clip

CAPTIONS = ["a handwritten digit seven", "a photo of a cat", "zero", "the digit two written by hand", "x", "a dog"]


def test_cosines_agree_with_torchmetrics_clipscore(tmp_path):
    from torchmetrics.multimodal.clip_score import CLIPScore

    clip = save_tiny_clip(tmp_path / "clip")
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cosines = clip_cosines(clip, images, CAPTIONS, "cpu", batch_size=4)  # two batches
    metric = CLIPScore(model_name_or_path=functools.partial(_load_local, clip))
    metric.update(images, CAPTIONS)
    assert float(cosines.sum()) * 100 == pytest.approx(float(metric.score), rel=1e-4, abs=1e-4)
    merged = merge_clip([float(cosines[:3].sum()), float(cosines[3:].sum())], [3, 3])
    assert merged["clip_cosine"] == pytest.approx(float(cosines.mean()), abs=1e-6)  # Table 3: the raw mean, sign kept
    assert merged["clip_score"] == pytest.approx(max(float(metric.compute()), 0.0), rel=1e-4, abs=1e-4)


def test_best_of_keeps_the_highest_scored_candidate_of_each_group():
    images = torch.arange(12.0).view(12, 1)
    scores = torch.tensor([0.1, 0.9, 0.3, 0.2, 0.5, 0.5, 0.4, 0.0, -0.3, -0.1, -0.2, -0.9])
    chosen, best = best_of(images, repeated(["a", "b", "c"], 4), 4, lambda imgs, caps: scores[imgs.view(-1).long()])
    assert chosen.view(-1).tolist() == [1.0, 4.0, 9.0] and best.tolist() == pytest.approx([0.9, 0.5, -0.1])
    assert repeated(["a", "b"], 3) == ("a", "a", "a", "b", "b", "b")
    with pytest.raises(ValueError, match="do not form groups of 5"):
        best_of(images, repeated(["a"], 12), 5, lambda imgs, caps: scores)
