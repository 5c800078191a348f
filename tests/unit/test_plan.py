"""The capacity planner (`python -m rqscale.plan`) against real models and measurements.

- parameters: the planner's meta-device counts = the real models' sum(p.numel());
- FLOPs: the planner's reported forward / train FLOPs = torch's FlopCounterMode on a real CPU step;
- model states: ZeRO-0..3 shrink by the factors of DeepSpeed's byte convention (and about the ZeRO paper's);
- activations: the analytic per-block model = the bytes autograd really saves (saved-tensor hooks);
- the CLI: JSON keys, a warning naming the fix key, exit status 2 for an unknown GPU.
"""
import functools
import json
import os

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from rqscale.config import load
from rqscale.losses import PatchDiscriminator
from rqscale.models import RQVAE, RQTransformer
from rqscale.plan import main
from rqscale.planning import GPUS, Cluster, plan
from rqscale.planning.activations import block_bytes, saved_bytes, stage2_activations
from rqscale.planning.memory import max_micro_batch, split_batch
from rqscale.tasks import Stage2Task
from rqscale.train.flops import spatial_length
from tests.conftest import DEBUG_STAGE1, DEBUG_STAGE2, REPO
from tests.unit.test_flops import BATCH, BENCH_STAGE2, counted, stage2_cfg

RQ_3_8B = os.path.join(REPO, "configs", "rq_3.8b.yaml")
CLUSTER = Cluster(nodes=1, gpus_per_node=8, gpu=GPUS["a100-80gb"])


@functools.lru_cache(maxsize=None)
def stage2_plan(path: str) -> dict:
    return plan(stage2_cfg(path), CLUSTER)


def real_stage2(cfg) -> RQTransformer:
    r = cfg.rqvae
    torch.manual_seed(0)
    return RQTransformer(cfg.stage2.model, tuple(r.code_shape), r.num_codes, r.code_dim)


# ---- parameters -------------------------------------------------------------------------------------
def test_stage2_params_match_the_real_model():
    cfg = stage2_cfg()
    model, report = real_stage2(cfg), stage2_plan(DEBUG_STAGE2)
    assert report["params_total"] == sum(p.numel() for p in model.parameters())
    assert report["params_spatial"] == sum(p.numel() for p in model.spatial.parameters())
    assert report["memory"]["trained_params"] == report["params_total"]


def test_stage1_params_match_the_real_models():
    cfg = load(DEBUG_STAGE1, [], check_files=False)
    model = RQVAE(cfg.rqvae)
    disc = PatchDiscriminator(cfg.rqvae.in_channels, cfg.stage1.loss.disc_ndf, cfg.stage1.loss.disc_layers)
    report = plan(cfg)
    real = sum(p.numel() for p in model.parameters())
    # params_total adds the EMA codebook (a buffer) as the reference counts it: K x n_z plus one padding row.
    codebook = sum(b.embed.numel() + b.dim for b in model.quantizer.codebooks)
    assert report["params_total"] == real + codebook and report["params_codebook"] == codebook
    assert report["params_encoder"] == sum(p.numel() for p in model.encoder.parameters())
    assert report["params_discriminator"] == sum(p.numel() for p in disc.parameters())


# ---- FLOPs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [DEBUG_STAGE2, BENCH_STAGE2], ids=["debug", "bench"])
def test_reported_flops_match_flop_counter(path):
    """The reported forward, in total and per part (FlopCounterMode's per-module totals of a no-grad
    forward), and the whole training step (forward + backward, counted) within 5%. One sample: FLOPs
    per image do not depend on the batch."""
    cfg, f = stage2_cfg(path), stage2_plan(path)["flops_per_image"]
    model, r = real_stage2(cfg), cfg.rqvae
    codes = torch.randint(0, r.num_codes, (1, *r.code_shape))
    cond = torch.randint(0, cfg.stage2.model.num_classes, (1,))
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(codes, cond)  # the math backend, as in test_flops.py: the counter sees attention's matmuls
    per_module = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    assert abs(f["forward"] / counter.get_total_flops() - 1) < 0.05
    for part, modules in (("spatial", ("spatial_proj", "spatial")), ("depth", ("depth_proj", "depth")), ("heads", ("head",))):
        measured = sum(per_module[f"RQTransformer.{m}"] for m in modules)
        assert abs(f[f"{part}_forward"] / measured - 1) < 0.05, part
        assert f[f"{part}_backward"] == 2 * f[f"{part}_forward"]
    step = counted(lambda: model(codes, cond).logits.logsumexp(-1).mean().backward())
    assert abs(f["train"] / step - 1) < 0.05 and f["forward"] + f["backward"] == f["train"]


# ---- model states -----------------------------------------------------------------------------------
def test_model_states_shrink_by_the_zero_factors():
    """8 GPUs, no offload. DeepSpeed's convention (rqscale/engine/estimate.py) is 2 + 2 + 16 bytes a
    parameter, so ZeRO-1/0 = (4 + 16/8)/20, ZeRO-2/0 = (2 + 18/8)/20 (its estimator), ZeRO-3/0 =
    (18/8)/20 plus its gathered largest layer (< 2% of the total here). The ZeRO paper's 2 + 2 + 12
    gives (4 + 12/8)/16, (2 + 14/8)/16, 1/8: the same trend within 15%."""
    report = stage2_plan(DEBUG_STAGE2)
    rows = {r["zero_stage"]: r["gpu_bytes"] for r in report["memory"]["model_states"] if not r["offload_optimizer"]}
    ratio = {s: rows[s] / rows[0] for s in (1, 2, 3)}
    deepspeed = {1: (4 + 16 / 8) / 20, 2: (2 + 18 / 8) / 20, 3: (18 / 8) / 20}
    paper = {1: (4 + 12 / 8) / 16, 2: (2 + 14 / 8) / 16, 3: 1 / 8}
    largest = 4 * report["memory"]["largest_layer_params"] / rows[0]
    assert rows[0] == 20 * report["params_total"]
    for s in (1, 2):
        assert abs(ratio[s] - deepspeed[s]) < 1e-6, s
    assert deepspeed[3] <= ratio[3] <= deepspeed[3] + largest + 1e-6
    for s in (1, 2, 3):
        assert abs(ratio[s] / paper[s] - 1) < 0.15, (s, ratio[s], paper[s])


def test_micro_batch_fits_and_one_more_does_not():
    usable, states, per = 72 * 2**30, 8 * 2**30, 300 * 2**20
    most = max_micro_batch(usable, states, per)
    assert states + most * per <= usable < states + (most + 1) * per
    assert split_batch(2048, 8, 20) == (16, 16)  # largest divisor of 256 per rank that is <= 20
    assert split_batch(2048, 64, 945) == (32, 1)
    assert split_batch(2048, 8, 0) == (0, 0)


# ---- activations ------------------------------------------------------------------------------------
CPU_MASK = 2  # rqscale's CPU dropout keeps its mask in the activations' dtype (bf16); CUDA keeps bool
VARIANTS = {
    "class": (),
    "text": ("stage2.model.condition=text", "stage2.model.text_vocab=1000", "stage2.model.text_length=12"),
    "dropout": ("stage2.model.resid_dropout=0.1", "stage2.model.embd_dropout=0.1"),  # attention dropout 0: SDPA
}


def measured_activations(cfg, checkpointing: bool) -> float:
    """Bytes per sample autograd saves in one bf16 training forward of the real stage-2 task (frozen
    RQ-VAE, soft labels, soft cross-entropy), parameters left out. With checkpointing the saved tensors
    are the blocks' inputs and everything outside them; add the larger of one spatial and one depth
    block run alone: what backward recomputes at a time."""
    torch.manual_seed(0)
    task = Stage2Task(cfg, RQVAE(cfg.rqvae))
    model, m, (h, w, d) = task.model.to(torch.bfloat16).train(), cfg.stage2.model, cfg.rqvae.code_shape
    text = m.condition == "text"
    cond = torch.randint(0, m.text_vocab, (BATCH, m.text_length)) if text else torch.randint(0, m.num_classes, (BATCH,))
    batch = {"latents": torch.randn(BATCH, h, w, cfg.rqvae.code_dim), "cond": cond}
    total = saved_bytes(lambda: task.losses(batch), model.parameters())
    if checkpointing:
        xs = torch.zeros(BATCH, spatial_length(m, h * w), m.embed_dim, dtype=torch.bfloat16, requires_grad=True)
        xd = torch.zeros(BATCH * h * w, d, m.embed_dim, dtype=torch.bfloat16, requires_grad=True)
        total += max(saved_bytes(lambda: model.spatial.blocks[0](xs), model.parameters()),
                     saved_bytes(lambda: model.depth.blocks[0](xd), model.parameters()))
    return total / BATCH


@pytest.mark.parametrize("checkpointing", [False, True], ids=["full", "checkpointed"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_activation_model_matches_saved_tensors(variant, checkpointing, monkeypatch):
    """Within 1%: the model counts LayerNorm statistics in fp32 (CUDA); on CPU they are bf16 (0.2% here).
    The planner models the GPU's attention, a fused SDPA kernel; here that is SDPA's fused CPU kernel
    (rqscale trains on CPU with its own math path, which keeps the score matrix)."""
    from rqscale.models import transformer

    monkeypatch.setattr(transformer, "CPU_ATTENTION", "sdpa")
    cfg = stage2_cfg(DEBUG_STAGE2, *VARIANTS[variant], f"stage2.model.activation_checkpointing={checkpointing}")
    estimate = stage2_activations(cfg, checkpointing, mask_bytes=CPU_MASK)["saved"]
    measured = measured_activations(cfg, checkpointing)
    print(f"{variant} checkpointing={checkpointing}: analytic {estimate:,} B, measured {measured:,.0f} B")
    assert abs(estimate / measured - 1) < 0.01


def test_checkpointing_keeps_block_inputs_only():
    """3.8B: checkpointing swaps every block's ~34 n_e bytes a token for its 2 n_e-byte input, plus one
    recomputed block (a depth block: 256 tokens against the spatial stack's 64); the head is unchanged."""
    cfg = stage2_cfg(RQ_3_8B)
    m, full, ckpt = cfg.stage2.model, stage2_activations(cfg, False), stage2_activations(cfg, True)
    blocks = m.spatial_layers * block_bytes(m, 64) + m.depth_layers * block_bytes(m, 256)
    inputs = 2 * m.embed_dim * (m.spatial_layers * 64 + m.depth_layers * 256)
    assert full["spatial"] + full["depth"] - ckpt["spatial"] - ckpt["depth"] == blocks - inputs
    assert ckpt["recompute"] == block_bytes(m, 256) and full["recompute"] == 0 and ckpt["heads"] == full["heads"]
    assert ckpt["total"] < full["total"] / 4


# ---- CLI --------------------------------------------------------------------------------------------
def test_cli_json_has_every_section(capsys):
    args = [DEBUG_STAGE2, "stage2.rqvae_checkpoint=null", "--nodes", "1", "--gpus-per-node", "2", "--gpu", "h100-80gb", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"params_total", "cluster", "flops_per_image", "memory", "speed", "warnings"} <= set(report)
    assert {"spatial_forward", "depth_forward", "heads_forward", "backward", "train"} <= set(report["flops_per_image"])
    assert {"model_states", "activations_per_sample", "max_micro_batch", "micro_batch", "grad_accum"} <= set(report["memory"])
    assert len(report["memory"]["model_states"]) == 8 and report["cluster"]["world"] == 2
    assert {"images_per_s", "epoch_hours", "schedule_days"} <= set(report["speed"])


def test_cli_warns_with_the_fix_key_when_the_model_does_not_fit(capsys):
    assert main([RQ_3_8B, "--nodes", "1", "--gpus-per-node", "8", "--gpu", "a100-40gb", "engine.zero_stage=0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["memory"]["max_micro_batch"] == 0 and not report["memory"]["fits"]
    assert any("does not fit" in w and "engine.zero_stage=3" in w for w in report["warnings"]), report["warnings"]


def test_cli_rejects_an_unknown_gpu(capsys):
    with pytest.raises(SystemExit) as exc:
        main([DEBUG_STAGE2, "--gpu", "v100-16gb"])
    assert exc.value.code == 2
    assert "--gpu" in capsys.readouterr().err
