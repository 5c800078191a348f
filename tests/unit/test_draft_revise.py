"""Draft-and-Revise decoding (Algorithms 1-2, Eq. 12): balanced random partitions, each position updated
once per UPDATE with its own stack hidden, inpainting that never touches known codes, seeded samples."""
import pytest
import torch

import rqscale.sampling.draft_revise as dr
from rqscale.sampling import SamplingParams
from rqscale.sampling.draft_revise import DraftRevise, balanced_partition, draft_and_revise, update
from tests.unit.test_contextual import small


def test_partitions_are_equal_random_and_cover_the_region_once():
    region = torch.ones(50, 64, dtype=torch.bool)
    region[:, :16] = False
    parts = balanced_partition(region, 4, torch.Generator().manual_seed(0))
    assert torch.equal(parts[:, :16], torch.full((50, 16), -1))
    for t in range(4):
        assert ((parts == t).sum(dim=1) == 12).all()  # 48 region positions, 4 groups of 12
    assert len({tuple(row.tolist()) for row in parts}) == 50  # drawn per sample
    with pytest.raises(ValueError, match="cannot split 48 positions into 64 groups"):
        balanced_partition(region, 64)


def test_every_position_is_updated_once_with_its_own_stack_hidden(monkeypatch):
    model = small()
    seen = []
    context = model.context
    monkeypatch.setattr(model, "context", lambda codes, hidden, cond: (seen.append(hidden.clone()), context(codes, hidden, cond))[1])
    marks = iter(range(1, 100))
    monkeypatch.setattr(dr, "sample_stacks", lambda m, ctx, params, batch, gen: torch.full((batch, 3), next(marks)))
    codes = torch.zeros(2, 16, 3, dtype=torch.long)
    blank = torch.zeros(2, 16, dtype=torch.bool)  # a revise step: every other stack visible
    parts = balanced_partition(torch.ones(2, 16, dtype=torch.bool), 4, torch.Generator().manual_seed(1))
    update(model, codes, blank, parts, 4, torch.tensor([1, 2]), SamplingParams())
    for t in range(4):
        assert torch.equal(seen[t], parts == t)  # group t hidden, the rest shown with their latest codes
        assert (codes[parts == t] == t + 1).all()  # written by its group's call, and by no other


def test_the_draft_starts_from_all_mask_and_reveals_groups_in_turn(monkeypatch):
    model = small()
    seen = []
    context = model.context
    monkeypatch.setattr(model, "context", lambda codes, hidden, cond: (seen.append(hidden.clone()), context(codes, hidden, cond))[1])
    draft_and_revise(model, 1, torch.tensor([3]), DraftRevise(4, 2, 0), torch.Generator().manual_seed(0))
    assert [int(h.sum()) for h in seen] == [16, 12, 8, 4]


def test_inpainting_keeps_known_codes_and_a_seed_fixes_the_samples():
    model = small()
    known = torch.randint(0, 32, (2, 16, 3))
    region = torch.zeros(2, 16, dtype=torch.bool)
    region[:, 4:12] = True
    schedule = DraftRevise(4, 2, 1, SamplingParams(), SamplingParams(temperature=0.8, cfg_scale=2.0))
    first = draft_and_revise(model, 2, torch.tensor([1, 5]), schedule, torch.Generator().manual_seed(7), known=known, region=region)
    again = draft_and_revise(model, 2, torch.tensor([1, 5]), schedule, torch.Generator().manual_seed(7), known=known, region=region)
    assert torch.equal(first[~region], known[~region]) and not torch.equal(first[region], known[region])
    assert torch.equal(first, again)
    other = draft_and_revise(model, 2, torch.tensor([1, 5]), schedule, torch.Generator().manual_seed(8), known=known, region=region)
    assert not torch.equal(first, other)


def test_drafts_are_kept_apart_from_the_revised_codes():
    model = small()
    codes, draft = draft_and_revise(model, 2, torch.tensor([0, 1]), DraftRevise(4, 2, 2), torch.Generator().manual_seed(0),
                                    keep_draft=True)
    assert codes.shape == draft.shape == (2, 16, 3) and not torch.equal(codes, draft)
