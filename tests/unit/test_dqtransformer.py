"""DQ-Transformer (Huang et al., CVPR 2023): the paper's sizes, the coarse-to-fine sequence and its round
trip, packed rows that compute exactly what each sample alone computes, the loss, the KV-cached sampler
against prefix recomputation (the reference's way), the sampler's constraints, and the refusals."""
import pytest
import torch
import torch.nn.functional as F

from rqscale.config import ConfigError, load
from rqscale.data.dq_sequence import COARSE, FINE, SequenceLayout, pack, packed_attention, to_codes, to_sequences
from rqscale.models import build_stage1_model
from rqscale.models.dqtransformer import Tokens
from rqscale.planning.params import stage2_params
from rqscale.sampling import SamplingParams
from rqscale.sampling.dq_sampler import sample_dq
from rqscale.tasks import DQStage2Task, stage2_task
from tests.conftest import REPO

DEBUG = f"{REPO}/configs/debug/dq_stage2.yaml"
LAYOUT = SequenceLayout(3, 4, 50)  # 12 regions, a 6 x 8 code map


def random_codes(batch: int, layout: SequenceLayout, seed: int = 0):
    """(codes (B, 2h, 2w) as a DQ-VAE writes them: a coarse region's 4 positions share one code; grain)."""
    g = torch.Generator().manual_seed(seed)
    h, w = layout.regions_h, layout.regions_w
    grain = torch.randint(0, 2, (batch, h, w), generator=g)
    grain[0], grain[1] = 0, 1  # the extremes: all coarse, all fine
    coarse = torch.randint(0, layout.num_codes, (batch, h, w), generator=g).repeat_interleave(2, 1).repeat_interleave(2, 2)
    fine = torch.randint(0, layout.num_codes, (batch, 2 * h, 2 * w), generator=g)
    return torch.where(grain.repeat_interleave(2, 1).repeat_interleave(2, 2).bool(), fine, coarse), grain


@pytest.mark.parametrize("name, paper", [("ffhq_308m.yaml", 308e6), ("imagenet_608m.yaml", 608e6)])
def test_the_papers_sizes_within_one_percent(name, paper):
    counts = stage2_params(load(f"{REPO}/configs/dq/{name}", check_files=False))
    assert abs(counts["params_total"] / paper - 1) < 0.01, counts


def test_codes_to_sequence_to_codes_is_exact_for_random_grain_maps():
    codes, grain = random_codes(64, LAYOUT)
    seq = to_sequences(codes, grain, LAYOUT)
    back, grain_back = to_codes(seq, LAYOUT)
    assert torch.equal(back, codes) and torch.equal(grain_back, grain)
    n_f = grain.flatten(1).sum(1)
    assert torch.equal(seq.length, (LAYOUT.regions - n_f + 2) + (4 * n_f + 2))  # (N_c + 2) + (4 N_f + 2)
    assert seq.length[0] == LAYOUT.regions + 4 and seq.length[1] == LAYOUT.max_length
    # the coarse segment lists its regions in raster order, then the fine one its map positions
    b = 2
    coarse_pos = seq.position[b][(seq.segment[b] == COARSE) & (seq.position[b] < LAYOUT.regions)]
    assert torch.equal(coarse_pos, (grain[b].flatten() == 0).nonzero().squeeze(1))


def test_packing_places_every_input_once_and_reports_the_padding():
    lengths = [20, 7, 13, 9, 28, 5, 11]
    rows = pack(lengths, max_length=30)
    used = rows.source[rows.source >= 0]
    expected = torch.cat([i * 30 + torch.arange(n - 1) for i, n in enumerate(lengths)])
    assert torch.equal(used.sort().values, expected.sort().values)
    assert rows.source.shape[1] == max(lengths) - 1 and rows.source.shape[0] < len(lengths)
    assert rows.padding == pytest.approx(1 - sum(n - 1 for n in lengths) / rows.source.numel())
    attend = packed_attention(rows.sample)
    assert not attend[0, 0, 0, 1] and attend.shape == (rows.source.shape[0], 1, rows.source.shape[1], rows.source.shape[1])


@pytest.fixture(scope="module")
def task():
    cfg = load(DEBUG, ["stage2.model.max_length=20"], check_files=False)
    torch.manual_seed(0)
    return stage2_task(cfg, build_stage1_model(cfg.rqvae)).eval()


def _alone(model, seq, b: int, cond):
    """Logits of sample b run alone, unpacked (a causal stack with no mask at all)."""
    n = int(seq.length[b]) - 1
    c, p, s = seq.content[b : b + 1], seq.position[b : b + 1], seq.segment[b : b + 1]
    label = None if cond is None else cond[b : b + 1].expand(1, n)
    tokens = Tokens(c[:, :n], p[:, :n], s[:, :n], torch.arange(n).unsqueeze(0), p[:, 1 : n + 1], s[:, 1 : n + 1], label)
    return model(tokens), (c[0, 1 : n + 1], p[0, 1 : n + 1], s[0, 1 : n + 1])


@pytest.mark.parametrize("attention", ["math", "sdpa"])  # sdpa: the GPU's branch (a boolean mask, no is_causal)
def test_packed_rows_compute_what_each_sample_alone_computes_and_the_loss_is_the_papers(task, attention, monkeypatch):
    monkeypatch.setattr("rqscale.models.transformer.CPU_ATTENTION", attention)
    assert isinstance(task, DQStage2Task)
    codes, grain = random_codes(9, task.layout, seed=3)
    cond = torch.arange(9) % 10
    seq = to_sequences(codes, grain, task.layout)
    tokens, _, valid, attend, _ = task.packed_tokens(seq, seq.length.tolist(), cond)
    sample = pack(seq.length.tolist(), task.layout.max_length).sample  # the slots' samples, as packed_tokens packs
    with torch.no_grad():
        packed = task.model(tokens, attend)
        content_ce, pos_ce, pos_seg = [], [], []
        for b in range(9):
            alone, (c, p, s) = _alone(task.model, seq, b, cond)
            where = sample == b
            torch.testing.assert_close(packed.content_logits[where], alone.content_logits[0], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(packed.position_logits[where], alone.position_logits[0], rtol=1e-4, atol=1e-4)
            content_ce.append(F.cross_entropy(alone.content_logits[0], c, reduction="none"))
            pos_ce.append(F.cross_entropy(alone.position_logits[0], p, reduction="none"))
            pos_seg.append(s)
        content_ce, pos_ce, pos_seg = torch.cat(content_ce), torch.cat(pos_ce), torch.cat(pos_seg)
        expected = content_ce.mean() + 0.5 * (pos_ce[pos_seg == COARSE].mean() + pos_ce[pos_seg == FINE].mean())
        task.rqvae.encode_with_grain = lambda images: (codes, grain)  # the same codes through losses()
        losses = task.losses({"images": torch.zeros(9, 3, 32, 32), "cond": cond})
    assert float(losses["total"]) == pytest.approx(float(expected), rel=1e-5)
    assert 0.0 <= float(losses["padding"]) < 1.0


def test_kv_cached_sampling_equals_prefix_recomputation(task):
    cond = torch.arange(6)
    cached = sample_dq(task.model, 6, cond, SamplingParams(), torch.Generator().manual_seed(1))
    recomputed = sample_dq(task.model, 6, cond, SamplingParams(), torch.Generator().manual_seed(1), use_cache=False)
    assert torch.equal(cached[0], recomputed[0])
    assert all(torch.equal(a, b) for a, b in zip(cached[1], recomputed[1]))


def test_sampled_sequences_are_valid_and_always_decode(task):
    lay = task.layout
    codes, seq = sample_dq(task.model, 200, torch.arange(200) % 10, SamplingParams(), torch.Generator().manual_seed(2))
    last_region_seen = False
    for b in range(200):
        s, p, c = seq.segment[b], seq.position[b], seq.content[b]
        coarse = p[(s == COARSE) & (p < lay.regions)]
        fine = p[(s == FINE) & (p < lay.map_positions)]
        assert len(set(coarse.tolist())) == len(coarse) and len(set(fine.tolist())) == len(fine)  # no repeats
        covered = torch.zeros(lay.regions, dtype=torch.bool)
        covered[coarse] = True
        covered_map = covered.view(lay.regions_h, lay.regions_w).repeat_interleave(2, 0).repeat_interleave(2, 1).flatten()
        assert not covered_map[fine].any()  # no fine code inside a coarse region
        assert torch.equal(torch.sort(torch.cat([covered_map.nonzero().squeeze(1), fine])).values, torch.arange(lay.map_positions))
        assert int(seq.length[b]) == len(coarse) + len(fine) + 4 and (c[(p < lay.map_positions) & (c < lay.num_codes)] >= 0).all()
        last_region_seen |= bool((coarse == lay.regions - 1).any())
    assert last_region_seen  # the reference never samples its last region coarse; here it is reachable
    images = task.rqvae.decode_codes(codes.view(200, *task.cfg.rqvae.code_shape))
    assert images.shape == (200, 3, 32, 32) and torch.isfinite(images).all()


@pytest.mark.parametrize("overrides, key", [
    (["stage2.model.kind=ar"], "stage2.model.kind"),  # DQ-VAE codes to an RQ-Transformer
    (["rqvae.kind=rq", "rqvae.ch_mult=[1,2,2]", "rqvae.code_shape=[8,8,4]"], "rqvae.kind"),  # a DQ-Transformer on RQ-VAE codes
    (["stage2.loss.soft_labels=true"], "stage2.loss.soft_labels"),
    (["stage2.model.max_length=19"], "stage2.model.max_length"),
    (["stage2.model.condition=text"], "stage2.model.condition"),
    (["stage2.sampling.cfg_scale=2.0", "stage2.model.cond_dropout=0.1"], "stage2.sampling.cfg_scale"),
])
def test_bad_dq_stage2_configs_are_refused_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        load(DEBUG, overrides, check_files=False)
    assert err.value.key == key


def test_stage2_refuses_a_stage1_file_of_the_other_family(tmp_path):
    from rqscale.train.stage2 import load_rqvae

    dq = load(DEBUG, check_files=False)
    rq = load(f"{REPO}/configs/debug/stage2.yaml", check_files=False)
    for cfg, other in ((dq, rq), (rq, dq)):
        path = tmp_path / f"{other.rqvae.kind}.pt"
        torch.save(build_stage1_model(other.rqvae).state_dict(), path)
        cfg.stage2.rqvae_checkpoint = str(path)
        with pytest.raises(ConfigError, match=f"set rqvae.kind={other.rqvae.kind}"):
            load_rqvae(cfg)


def test_the_sampling_benchmark_times_both_samplers_on_the_same_model():
    from rqscale.bench import dq

    r = dq.run(DEBUG, batch=4)
    assert r["kv_cache_seconds_per_sample"] > 0 and r["recompute_seconds_per_sample"] > 0
    assert r["kv_cache_speedup"] == pytest.approx(r["recompute_seconds_per_sample"] / r["kv_cache_seconds_per_sample"])
    assert 8 <= r["mean_length"] <= 20 and "KV cache speed-up" in dq.report(r)


def test_the_training_benchmark_sets_dq_tokens_against_the_ar_models():
    from rqscale.bench import dq_train

    r = dq_train.run(DEBUG, batch=4, repeats=1, warmup=1)
    dq, ar = r["models"]["dq"], r["models"]["ar"]
    assert 8 <= dq["tokens_per_image"] <= 19 and ar["tokens_per_image"] == 256  # 4 x 4 map; the AR twin's 8 x 8 x 4
    assert r["tokens_per_s_dq_over_ar"] == pytest.approx(dq["tokens_per_s"] / ar["tokens_per_s"])
    assert "tokens/s" in dq_train.report(r)


def test_the_detail_benchmark_measures_a_dq_vae_file(tmp_path):
    """`python -m rqscale.bench dq-detail` on a saved (untrained) DQ-VAE: the correlation and the three errors."""
    from rqscale.bench import dq_detail

    config = f"{REPO}/configs/debug/dq_stage1_digits.yaml"
    torch.manual_seed(0)
    torch.save(build_stage1_model(load(config, check_files=False).rqvae).state_dict(), tmp_path / "dq.pt")
    r = dq_detail.run(config, str(tmp_path / "dq.pt"), count=20)
    assert -1.0 <= r["spearman"] <= 1.0 and 0.0 <= r["fine_share"] <= 1.0
    assert set(r["mse_by_grain_map"]) == {"router", "highest_variance_fine", "lowest_variance_fine"}
    assert "Spearman" in dq_detail.report(r)
    variance = dq_detail.region_variance(torch.zeros(1, 3, 32, 32).index_fill_(3, torch.arange(16, 32), 1.0)
                                         .mul_(torch.arange(32).float().view(1, 1, 32, 1)))
    assert variance.shape == (1, 2, 2) and bool((variance[..., 1] > variance[..., 0]).all())  # detail on the right
