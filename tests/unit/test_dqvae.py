"""The DQ-VAE's dynamic grained coding (Huang et al., CVPR 2023; rqscale/models/dqvae.py): a hard,
straight-through router, the budget loss that steers the share of fine regions to r_f, the assembled
map whose coarse regions carry one code, the weighted commitment, and refusals of bad settings."""
import copy
from dataclasses import replace

import pytest
import torch

from rqscale.config import ConfigError, load
from rqscale.models.dqvae import DQVAE, GrainRouter, assemble, budget_loss, codes_per_image, gate
from tests.conftest import REPO

SMALL = ["rqvae.resolution=32", "rqvae.ch=32", "rqvae.ch_mult=[1,1,2,2,4]", "rqvae.z_channels=64", "rqvae.code_dim=64",
         "rqvae.num_codes=256", "rqvae.code_shape=[4,4,1]", "rqvae.attn_resolutions=[4]", "rqvae.kind=dq",
         "rqvae.dq.decoder_attn_resolutions=[4]"]


def small(*extra) -> DQVAE:
    torch.manual_seed(0)
    return DQVAE(load(None, [*SMALL, *extra], check_files=False).rqvae)


def test_the_training_gate_is_one_hot_with_a_straight_through_gradient():
    logits = torch.randn(2, 3, 3, 2, requires_grad=True)
    choice = gate(logits, training=True, tau=1.0)
    assert torch.equal(choice.sum(-1), torch.ones(2, 3, 3)) and set(choice.unique().tolist()) <= {0.0, 1.0}
    (choice[..., 1] * torch.arange(18.0).view(2, 3, 3)).sum().backward()
    assert logits.grad.abs().sum() > 0  # the hard sample passes the soft gradient through
    evaluation = gate(logits.detach(), training=False, tau=1.0)
    assert torch.equal(evaluation.argmax(-1), logits.detach().argmax(-1))


def test_assembly_repeats_coarse_vectors_and_keeps_fine_ones():
    fine, coarse = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 2, 2)
    choice = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]])  # regions (0,0), (1,1) coarse
    out = assemble(fine, coarse, choice)
    assert torch.equal(out[..., :2, :2], coarse[..., :1, :1].expand(1, 4, 2, 2))
    assert torch.equal(out[..., :2, 2:], fine[..., :2, 2:]) and torch.equal(out[..., 2:, :2], fine[..., 2:, :2])


def test_a_coarse_region_holds_one_code_and_the_count_is_256_plus_3_per_fine_region():
    model = small().eval()
    codes, grain = model.encode_with_grain(torch.rand(4, 3, 32, 32) * 2 - 1)
    blocks = codes[..., 0].unfold(1, 2, 2).unfold(2, 2, 2).reshape(4, 2, 2, 4)  # (B, h, w, the region's 4 codes)
    same = (blocks == blocks[..., :1]).all(-1)
    assert same[grain == 0].all()
    assert torch.equal(codes_per_image(grain), 4 + 3 * grain.flatten(1).sum(1))
    assert model.decode_codes(codes).shape == (4, 3, 32, 32)


def test_the_budget_loss_is_lambda_times_the_squared_gap_to_r_f():
    choice = torch.zeros(2, 4, 4, 2)
    choice[..., 0] = 1
    choice[0, :3, :, 1], choice[0, :3, :, 0] = 1, 0  # 12 of 32 regions fine
    loss, share = budget_loss(choice, 0.5, 10.0)
    assert share == pytest.approx(12 / 32) and float(loss) == pytest.approx(10 * (12 / 32 - 0.5) ** 2)


def test_the_budget_alone_steers_the_router_to_r_f():
    torch.manual_seed(0)
    router = GrainRouter(32)
    fine, coarse = torch.randn(8, 32, 8, 8), torch.randn(8, 32, 4, 4)
    opt = torch.optim.Adam(router.parameters(), lr=1e-2)
    for _ in range(200):
        loss, share = budget_loss(gate(router(fine, coarse), True, 1.0), 0.3, 10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    shares = [float(budget_loss(gate(router(fine, coarse), True, 1.0), 0.3, 10.0)[1]) for _ in range(20)]
    assert abs(sum(shares) / 20 - 0.3) < 0.05, shares


def test_coarse_copies_weigh_a_quarter_in_the_commitment_loss():
    model = small().train()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    before = copy.deepcopy(model.quantizer)  # the codebook the codes were chosen from (training moves it)
    torch.manual_seed(1)
    out = model(images)
    torch.manual_seed(1)
    z, choice = model.routed(images)  # the same Gumbel draws
    err = (z - before.decode(out.codes)).pow(2).sum(-1).detach()  # (B, 4, 4) squared error per position
    fine = choice[..., 1].repeat_interleave(2, 1).repeat_interleave(2, 2) > 0.5
    expected = torch.where(fine, err, 0.25 * err).sum() / z.numel()
    assert float(out.commitment_loss.detach()) == pytest.approx(float(expected), rel=1e-4)
    assert 0.0 <= float(out.fine_share) <= 1.0 and out.grain.shape == (2, 2, 2)


@pytest.mark.parametrize("override, key", [("rqvae.dq.fine_ratio=1.0", "rqvae.dq.fine_ratio"),
                                           ("rqvae.dq.fine_ratio=0", "rqvae.dq.fine_ratio"),
                                           ("rqvae.dq.gumbel_tau=0", "rqvae.dq.gumbel_tau")])
def test_bad_dq_settings_name_their_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load(None, [*SMALL, override], check_files=False)


def test_a_resolution_not_divisible_by_16_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="'rqvae.resolution': 40 is not divisible by 16"):
        load(None, [*SMALL, "rqvae.resolution=40"], check_files=False)  # at load, before any worker
    cfg = load(None, SMALL, check_files=False)
    with pytest.raises(ConfigError, match="'rqvae.ch_mult': \\[1, 2, 2\\] has 2 downsamplings, not 4"):
        DQVAE(replace(cfg.rqvae, ch_mult=[1, 2, 2]))  # the model checks what it is given, too
    with pytest.raises(ConfigError, match="'rqvae.code_shape'.*set rqvae.code_shape=\\[4,4,1\\]"):
        load(None, [*SMALL, "rqvae.code_shape=[2,2,1]"], check_files=False)


def test_an_rq_transformer_on_dq_vae_codes_is_refused_naming_the_model_kind():
    with pytest.raises(ConfigError, match="'stage2.model.kind': 'ar' reads fixed-length RQ-VAE codes.*set stage2.model.kind=dq"):
        load(f"{REPO}/configs/debug/stage2.yaml", ["rqvae.kind=dq", "rqvae.ch_mult=[1,1,2,2,4]", "rqvae.code_shape=[4,4,1]",
                                                  "rqvae.attn_resolutions=[]"], check_files=False)


@pytest.mark.parametrize("name", ["stage1_imagenet.yaml", "stage1_ffhq.yaml"])
def test_the_paper_stage_1_configs_build_the_reference_s_shapes(name):
    cfg = load(f"{REPO}/configs/dq/{name}", check_files=False)
    with torch.device("meta"):
        model = DQVAE(cfg.rqvae)
    assert cfg.rqvae.code_shape == [32, 32, 1] and model.quantizer.num_codes == 1024 and model.quantizer.dim == 256
    assert len(model.decoder.levels) == 4 and model.position.rows.shape == (32, 256)  # decoder from the F = 8 map
    assert (cfg.rqvae.dq.fine_ratio, cfg.rqvae.dq.budget_weight) == (0.5, 10.0)


@pytest.mark.parametrize("mode", ["scale", "cap"])
def test_the_generator_weight_is_scaled_or_capped_by_disc_weight(mode):
    """scale (the RQ-VAE ref): adaptive weight x disc_weight; cap (the DQ-VAE ref): min(adaptive weight, disc_weight)."""
    from rqscale.tasks import Stage1Task

    cfg = load(f"{REPO}/configs/debug/dq_stage1_digits.yaml", ["stage1.loss.disc_start=0", f"stage1.loss.disc_weight_mode={mode}",
                                                              "stage1.loss.disc_weight=0.1"], check_files=False)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    torch.manual_seed(0)  # the same weights and Gumbel noise in both tasks
    task = Stage1Task(cfg).train()
    weight = float(task.generator_losses(images, step=0)["g_weight"])
    torch.manual_seed(0)
    raw = float(Stage1Task(load(f"{REPO}/configs/debug/dq_stage1_digits.yaml", ["stage1.loss.disc_start=0",
                                                                              "stage1.loss.disc_weight=1.0"], check_files=False))
                .train().generator_losses(images, step=0)["g_weight"])  # the adaptive weight itself
    assert raw > 0.1  # so the cap bites
    assert weight == pytest.approx(raw * 0.1 if mode == "scale" else 0.1, rel=1e-4)
