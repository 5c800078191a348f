"""The FLOP model against torch's FlopCounterMode on real passes: stage 2's analytic count, stage 1's count of
the real task on fake tensors, and the one function the training loop reports MFU with.

On CPU, SDPA dispatches to `_scaled_dot_product_flash_attention_for_cpu`, which the counter has no
formula for (it would count attention as 0). The math backend computes the same attention as two
batched matmuls, which the counter does see, so the comparisons run under it.
"""
import os

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from rqscale.config import load
from rqscale.models import RQVAE, RQTransformer
from rqscale.plan import stage2_params
from rqscale.tasks import Stage1Task
from rqscale.train import flops
from rqscale.train.flops import flops_per_sample, stage1_flops, stage2_flops, tokens_per_sample
from tests.conftest import DEBUG_STAGE1, DEBUG_STAGE2, REPO, UNCONDITIONAL

BENCH_STAGE2 = os.path.join(REPO, "configs", "debug", "stage2_bench.yaml")
BATCH = 3


def stage2_cfg(path=DEBUG_STAGE2, *overrides):
    return load(path, ["stage2.rqvae_checkpoint=null", *overrides], check_files=False)


def counted(fn) -> int:
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def measured_stage2_forward(cfg) -> float:
    """FLOPs of one real CPU forward of the RQ-Transformer, per sample."""
    r, m = cfg.rqvae, cfg.stage2.model
    torch.manual_seed(0)
    model = RQTransformer(m, tuple(r.code_shape), r.num_codes, r.code_dim).eval()
    h, w, d = r.code_shape
    codes = torch.randint(0, r.num_codes, (BATCH, h * w, d))
    cond = {"class": torch.randint(0, m.num_classes, (BATCH,)),
            "text": torch.randint(0, m.text_vocab, (BATCH, m.text_length)), "none": None}[m.condition]
    with torch.no_grad():
        return counted(lambda: model(codes, cond)) / BATCH


@pytest.mark.parametrize("path, overrides", [
    (DEBUG_STAGE2, ()),
    (BENCH_STAGE2, ()),
    (DEBUG_STAGE2, ("stage2.model.condition=text", "stage2.model.text_vocab=1000", "stage2.model.text_length=12")),
    (DEBUG_STAGE2, ("stage2.model.condition=none", *UNCONDITIONAL)),
], ids=["debug-class", "bench-class", "debug-text", "debug-none"])
def test_stage2_forward_matches_flop_counter(path, overrides):
    cfg = stage2_cfg(path, *overrides)
    ratio = stage2_flops(cfg)["forward"] / measured_stage2_forward(cfg)
    print(f"{os.path.basename(path)} {overrides}: analytic / counted = {ratio:.6f}")
    assert abs(ratio - 1) < 0.05


@pytest.mark.parametrize("path", [DEBUG_STAGE2, BENCH_STAGE2], ids=["debug", "bench"])
def test_stage2_train_matches_counted_forward_and_backward(path):
    """train = 3 x forward is the convention; autograd's real backward is within 1% of it (the input
    Linears need no input gradient, so the counter is slightly lower)."""
    cfg = stage2_cfg(path)
    r = cfg.rqvae
    torch.manual_seed(0)
    model = RQTransformer(cfg.stage2.model, tuple(r.code_shape), r.num_codes, r.code_dim)
    codes = torch.randint(0, r.num_codes, (BATCH, *r.code_shape))
    cond = torch.randint(0, cfg.stage2.model.num_classes, (BATCH,))
    measured = counted(lambda: model(codes, cond).logits.logsumexp(-1).mean().backward()) / BATCH
    ratio = stage2_flops(cfg)["train"] / measured
    print(f"{os.path.basename(path)}: analytic train / counted forward+backward = {ratio:.4f}")
    assert 1.0 <= ratio < 1.01


def test_text_condition_adds_prefix_attention_and_text_head():
    base = stage2_flops(stage2_cfg(DEBUG_STAGE2, "stage2.model.condition=none", *UNCONDITIONAL))
    text = stage2_flops(stage2_cfg(DEBUG_STAGE2, "stage2.model.condition=text", "stage2.model.text_length=12",
                                   "stage2.model.text_vocab=1000"))
    assert text["depth_forward"] == base["depth_forward"]  # the depth stack never sees the caption
    assert text["spatial_forward"] > base["spatial_forward"]  # 12 + 63 tokens instead of 1 + 63
    assert text["heads_forward"] - base["heads_forward"] == 2 * 11 * 128 * 1000  # L-1 tokens x C x V


@pytest.mark.parametrize("path", [DEBUG_STAGE2, BENCH_STAGE2, os.path.join(REPO, "configs", "rq_cc3m_654m.yaml")])
def test_stage2_parts_add_up_and_train_is_three_forwards(path):
    f = stage2_flops(stage2_cfg(path))
    assert f["spatial_forward"] + f["depth_forward"] + f["heads_forward"] == f["forward"]
    assert f["train"] == 3 * f["forward"]


def test_spatial_part_scales_with_spatial_layers():
    parts = [stage2_flops(stage2_cfg(DEBUG_STAGE2, f"stage2.model.spatial_layers={n}")) for n in (2, 4, 8)]
    per_layer = (parts[1]["spatial_forward"] - parts[0]["spatial_forward"]) / 2
    assert per_layer > 0
    assert parts[2]["spatial_forward"] - parts[1]["spatial_forward"] == 4 * per_layer
    assert len({p["depth_forward"] for p in parts}) == 1 and len({p["heads_forward"] for p in parts}) == 1


def test_full_size_forward_is_two_flops_per_parameter_per_token():
    # Kaplan et al.'s C_forward ~ 2N per token, on the 821M row of Table A.1 built on the meta device:
    # spatial weights see T tokens, depth weights and the head T*D; attention adds ~1%.
    cfg = stage2_cfg(os.path.join(REPO, "configs", "rq_imagenet_821m.yaml"))
    p, t = stage2_params(cfg), 64
    approx = 2 * (p["params_spatial"] * t + p["params_depth"] * t * 4 + p["params_embeddings_and_heads"] * t * 4)
    assert abs(stage2_flops(cfg)["forward"] / approx - 1) < 0.05


def test_tokens_per_sample_is_h_w_d():
    assert tokens_per_sample(stage2_cfg()) == 8 * 8 * 4
    assert tokens_per_sample(load(os.path.join(REPO, "configs", "rq_imagenet_821m.yaml"), ["stage2.rqvae_checkpoint=null"],
                                  check_files=False)) == 256


# ---- stage 1 --------------------------------------------------------------------------------------
def test_stage1_generator_forward_matches_counter_on_real_model():
    """Meta-device encoder/decoder counts + the analytic quantizer search = a real CPU forward."""
    cfg = load(DEBUG_STAGE1, [], check_files=False)
    torch.manual_seed(0)
    model = RQVAE(cfg.rqvae).eval()  # eval: no codebook EMA step
    images = torch.rand(BATCH, 3, cfg.rqvae.resolution, cfg.rqvae.resolution) * 2 - 1
    with torch.no_grad():
        real = counted(lambda: model(images)) / BATCH
    f = stage1_flops(cfg)
    assert f["quantizer_forward"] > 0
    assert f["encoder_forward"] + f["quantizer_forward"] + f["decoder_forward"] == real


def test_stage1_totals_follow_the_loss_config():
    cfg = load(DEBUG_STAGE1, [], check_files=False)
    f = stage1_flops(cfg)
    generator = f["encoder_forward"] + f["quantizer_forward"] + f["decoder_forward"]
    assert f["forward"] == generator + f["lpips_forward"] + 3 * f["disc_forward"]
    # The generator trains at ~3x forward; frozen LPIPS and the discriminator add less than 3x theirs.
    assert 3 * generator < f["train"] < 3 * f["forward"]
    assert f["train_without_gan"] < f["train"]
    no_lpips = stage1_flops(load(DEBUG_STAGE1, ["stage1.loss.lpips_weight=0"], check_files=False))
    assert no_lpips["lpips_forward"] == 0 and no_lpips["train"] < f["train"]
    no_gan = stage1_flops(load(DEBUG_STAGE1, ["stage1.loss.disc_weight=0"], check_files=False))
    assert no_gan["forward"] == no_gan["forward_without_gan"] == f["forward_without_gan"]
    assert no_gan["train"] == f["train_without_gan"]


def test_stage1_flops_are_cached_per_config():
    from rqscale.train.flops import _stage1_cached

    cfg = load(DEBUG_STAGE1, [], check_files=False)
    stage1_flops(cfg)
    hits = _stage1_cached.cache_info().hits
    again = stage1_flops(load(DEBUG_STAGE1, ["train.max_steps=7"], check_files=False))  # training keys: same FLOPs
    assert _stage1_cached.cache_info().hits == hits + 1 and again == stage1_flops(cfg)
    assert flops_per_sample(cfg) == stage1_flops(cfg)["train"]
    assert flops_per_sample(stage2_cfg()) == stage2_flops(stage2_cfg())["train"]


@pytest.mark.slow
def test_stage1_step_count_equals_a_real_cpu_step():
    """Fake tensors count what real ones compute: Stage1Engines.step's work on a real task, 2 images, GAN on."""
    cfg = load(DEBUG_STAGE1, ["stage1.loss.disc_start=0"], check_files=False)
    torch.manual_seed(0)
    task = Stage1Task(cfg).train()
    images = torch.rand(2, 3, cfg.rqvae.resolution, cfg.rqvae.resolution) * 2 - 1
    with FlopCounterMode(display=False) as counter:
        flops.stage1_step(task, images, step=0)
    assert counter.get_total_flops() / 2 == stage1_flops(cfg)["train"]


def test_gan_switches_the_discriminator_step_in_and_out():
    cfg = load(DEBUG_STAGE1, [], check_files=False)
    f = stage1_flops(cfg)
    no_gan = stage1_flops(load(DEBUG_STAGE1, ["stage1.loss.disc_weight=0"], check_files=False))
    # The GAN adds G's pass through D (forward and input gradients; D is frozen), D's own step on x and x^
    # (forwards and weight gradients), and the adaptive weight's gradients of both losses: > 6 D passes.
    assert f["train"] - no_gan["train"] > 6 * f["disc_forward"]
    assert stage1_flops(load(DEBUG_STAGE1, ["stage1.loss.disc_start=0"], check_files=False))["train"] == f["train"]


def test_the_training_loop_reports_with_flops_py():
    import rqscale.train.loop as loop

    assert loop.flops_and_tokens_per_sample is flops.flops_and_tokens_per_sample and not hasattr(loop, "_flops")
    stage1 = load(DEBUG_STAGE1, [], check_files=False)
    assert flops.flops_and_tokens_per_sample(stage1) == (stage1_flops(stage1)["train"], 0)
    assert flops.flops_and_tokens_per_sample(stage2_cfg()) == (stage2_flops(stage2_cfg())["train"], 8 * 8 * 4)


def test_stage1_count_runs_the_tasks_own_losses(monkeypatch):
    """No copy of the losses in flops.py: extra work in Stage1Task's generator loss shows up in the count."""
    cfg = load(DEBUG_STAGE1, [], check_files=False)
    before = stage1_flops(cfg)
    real = Stage1Task.generator_losses

    def heavier(self, images, step):  # one more (32x32) @ (32x32) product per image channel, forward only
        losses = real(self, images, step)
        return {**losses, "total": losses["total"] + (images @ images).mean()}

    monkeypatch.setattr(Stage1Task, "generator_losses", heavier)
    flops._stage1_cached.cache_clear()
    try:
        after = stage1_flops(cfg)
    finally:
        flops._stage1_cached.cache_clear()
    extra = 3 * 2 * 32**3  # the image needs no gradient: no backward work
    assert after["train_without_gan"] - before["train_without_gan"] == extra
    assert after["train"] - before["train"] == extra and after["encoder_forward"] == before["encoder_forward"]
