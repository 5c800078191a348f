"""Confidence-ordered drafts (supplement Table 3: Top-C, Top-C-50%) and the stack confidence they rank by:
each step fills a balanced group's share of positions, every position exactly once, never a known one."""
import torch

from rqscale.sampling import SamplingParams
from rqscale.sampling.confidence import group_sizes, pick_confident
from rqscale.sampling.draft_revise import DraftRevise, balanced_partition, draft_and_revise, sample_stacks
from tests.unit.test_contextual import small


def test_group_sizes_are_the_balanced_partition_s():
    region = torch.ones(3, 16, dtype=torch.bool)
    region[1, :6] = False  # 10 positions in 4 groups: 3 / 2 / 3 / 2 in some order
    sizes = group_sizes(region, 4)
    parts = balanced_partition(region, 4, torch.Generator().manual_seed(0))
    assert torch.equal(sizes, torch.stack([(parts == t).sum(dim=1) for t in range(4)]))
    assert sizes.sum(dim=0).tolist() == [16, 10, 16]


def test_top_c_takes_the_most_confident_blank_positions():
    confidence = torch.tensor([[0.1, 0.9, 0.5, 0.8, 0.7]]).log()
    blank = torch.tensor([[True, False, True, True, True]])  # position 1 is known: never chosen, however confident
    chosen = pick_confident(confidence, blank, torch.tensor([2]), "top-c")
    assert chosen.tolist() == [[False, False, False, True, True]]


def test_top_c_50_picks_at_random_within_the_more_confident_half():
    confidence = torch.arange(8.0).expand(2000, 8)  # position 7 most confident
    blank = torch.ones(2000, 8, dtype=torch.bool)
    chosen = pick_confident(confidence, blank, torch.full((2000,), 2), "top-c-50", torch.Generator().manual_seed(0))
    assert (chosen.sum(dim=1) == 2).all() and not chosen[:, :4].any()  # only the upper half of 8
    share = chosen[:, 4:].float().mean(dim=0)
    assert ((share - 0.5).abs() < 0.05).all(), share  # 2 of 4, uniformly


def test_stack_log_probs_are_those_of_the_drawn_codes():
    model = small()
    context = torch.randn(5, model.cfg.embed_dim)
    params = SamplingParams(temperature=0.7).resolve(model.depth_codes, model.num_codes)
    log_probs = torch.zeros(5)
    stacks = sample_stacks(model, context, params, 5, torch.Generator().manual_seed(0), log_probs)
    # the same stacks teacher-forced through the depth transformer give the same log-probabilities
    logits = model.head(model.depth(model.depth_tokens(context, stacks[:, :-1]))) / 0.7
    expected = logits.float().log_softmax(-1).gather(2, stacks.unsqueeze(-1)).squeeze(-1).sum(1)
    assert torch.allclose(log_probs, expected, atol=1e-4) and (log_probs < 0).all()


def test_a_confident_draft_fills_the_region_once_and_keeps_known_codes(monkeypatch):
    import rqscale.sampling.confidence as conf

    model = small()
    known = torch.randint(0, 32, (2, 16, 3))
    region = torch.zeros(2, 16, dtype=torch.bool)
    region[:, 2:14] = True  # 12 positions, 4 steps of 3
    filled = []
    pick = conf.pick_confident
    monkeypatch.setattr(conf, "pick_confident", lambda *a: (filled.append(pick(*a)), filled[-1])[1])
    for strategy in ("top-c", "top-c-50"):
        filled.clear()
        schedule = DraftRevise(4, 2, 0, draft_strategy=strategy)
        codes = draft_and_revise(model, 2, torch.tensor([1, 2]), schedule, torch.Generator().manual_seed(0), known=known, region=region)
        steps = torch.stack(filled)  # (4, 2, 16)
        assert (steps.sum(dim=2) == 3).all() and torch.equal(steps.sum(dim=0).bool(), region) and steps.sum(dim=0).max() == 1
        assert torch.equal(codes[~region], known[~region])
        again = draft_and_revise(model, 2, torch.tensor([1, 2]), schedule, torch.Generator().manual_seed(0), known=known, region=region)
        assert torch.equal(codes, again)
