"""RQ-Transformer: causality, KV-cache equivalence, checkpointing, and Table A.1 parameter counts."""
import glob
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from rqscale.config import RQTransformerConfig, load
from rqscale.models import RQTransformer
from rqscale.plan import stage2_params
from rqscale.sampling import SamplingParams, sample_codes
from tests.conftest import REPO

SHAPE, K, NZ = (3, 3, 4), 32, 8  # T = 9 positions, D = 4


def tiny(condition="class", **kw) -> RQTransformer:
    torch.manual_seed(0)
    cfg = RQTransformerConfig(embed_dim=32, num_heads=4, spatial_layers=2, depth_layers=2, condition=condition,
                              num_classes=5, text_vocab=20, text_length=6, embd_dropout=0, resid_dropout=0, attn_dropout=0, **kw)
    model = RQTransformer(cfg, SHAPE, K, NZ).eval()
    model.codebook.normal_()
    return model


def cond_for(model, b):
    if model.cfg.condition == "class":
        return torch.arange(b) % 5
    if model.cfg.condition == "text":
        return torch.randint(0, 20, (b, 6))
    return None


@pytest.mark.parametrize("condition", ["none", "class", "text"])
def test_spatial_causality(condition):
    model = tiny(condition)
    codes = torch.randint(0, K, (2, 9, 4))
    cond = cond_for(model, 2)
    base = model(codes, cond).logits
    for t in range(9):
        changed = codes.clone()
        changed[:, t:] = torch.randint(0, K, changed[:, t:].shape)
        logits = model(changed, cond).logits
        assert torch.allclose(logits[:, :t], base[:, :t], atol=1e-6), t  # positions < t untouched


def test_depth_causality():
    model = tiny()
    codes, cond = torch.randint(0, K, (2, 9, 4)), cond_for(model, 2)
    base = model(codes, cond).logits
    for t in (0, 4, 8):
        for d in range(4):
            changed = codes.clone()
            changed[:, t, d] = (changed[:, t, d] + 1) % K
            logits = model(changed, cond).logits
            assert torch.allclose(logits[:, t, : d + 1], base[:, t, : d + 1], atol=1e-6), (t, d)  # depths <= d
            if d < 3:  # positive control: the next depth does see the change
                assert not torch.allclose(logits[:, t, d + 1], base[:, t, d + 1])


@pytest.mark.parametrize("condition,cfg_scale", [("none", 1.0), ("class", 1.0), ("class", 2.5), ("text", 1.0)])
def test_kv_cache_logits_equal_teacher_forcing(condition, cfg_scale):
    model = tiny(condition)
    cond = cond_for(model, 3)
    seen = {}
    codes = sample_codes(model, 3, cond, SamplingParams(cfg_scale=cfg_scale), torch.Generator().manual_seed(0),
                         on_logits=lambda t, d, logits: seen.__setitem__((t, d), logits.clone()))
    full = model(codes, cond).logits
    if cfg_scale != 1.0:
        null = model(codes, torch.full_like(cond, model.null_class)).logits
        full = null + cfg_scale * (full - null)
    assert len(seen) == 9 * 4
    for (t, d), logits in seen.items():
        assert torch.allclose(logits, full[:, t, d], atol=1e-4), (t, d)


def test_cache_and_recompute_sample_identically():
    model = tiny()
    cond = cond_for(model, 4)
    a = sample_codes(model, 4, cond, SamplingParams(top_k=8), torch.Generator().manual_seed(3))
    b = sample_codes(model, 4, cond, SamplingParams(top_k=8), torch.Generator().manual_seed(3), use_cache=False)
    assert torch.equal(a, b)


def test_activation_checkpointing_gives_same_gradients():
    model = tiny().train()
    codes, cond = torch.randint(0, K, (2, 9, 4)), torch.tensor([0, 1])
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_checkpointing(enabled)
        model(codes, cond).logits.logsumexp(-1).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


TARGETS = {  # Table A.1 (# params); FFHQ: 355M with K=2048, see its config
    "rq_lsun_cat_612m.yaml": 612e6, "rq_lsun_bedroom_612m.yaml": 612e6, "rq_lsun_church_370m.yaml": 370e6,
    "rq_ffhq_355m.yaml": 355e6, "rq_imagenet_480m.yaml": 480e6, "rq_imagenet_821m.yaml": 821e6,
    "rq_imagenet_1.4b.yaml": 1388e6, "rq_3.8b.yaml": 3822e6, "rq_cc3m_654m.yaml": 654e6,
}


def test_all_table_a1_configs_within_one_percent():
    start = time.perf_counter()
    assert sorted(TARGETS) == sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "configs", "rq_*.yaml")))
    for name, target in TARGETS.items():
        cfg = load(os.path.join(REPO, "configs", name), check_files=False)
        counts = stage2_params(cfg)
        assert abs(counts["params_total"] - target) / target < 0.01, (name, counts["params_total"])
        assert counts["params_spatial"] + counts["params_depth"] + counts["params_embeddings_and_heads"] == counts["params_total"]
    assert time.perf_counter() - start < 30  # meta device: no memory, seconds


@pytest.mark.slow
def test_plan_cli_prints_json():
    proc = subprocess.run([sys.executable, "-m", "rqscale.plan", "configs/rq_3.8b.yaml", "--json"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"params_total", "params_spatial", "params_depth", "params_embeddings_and_heads"} <= set(report)
    assert abs(report["params_total"] - 3822e6) / 3822e6 < 0.01


def test_3_8b_config_uses_paper_dropout():
    cfg = load(os.path.join(REPO, "configs", "rq_3.8b.yaml"), check_files=False)
    m = cfg.stage2.model
    assert (m.embd_dropout, m.resid_dropout, m.attn_dropout) == (0.3, 0.3, 0.3)  # A.3
    assert cfg.train.global_batch == 2048 and cfg.stage2.optim.betas == [0.9, 0.95]
