"""The DQ-VAE's entropy router (rqvae.dq.router=entropy; the authors' later "better version"): the region
entropy it reads, the threshold data_prep.entropy calibrates, where the fine codes then go on held-out
photos, and the router's place in the model, its weights and its config."""
import json
import math
from dataclasses import replace

import pytest
import torch
from scipy.stats import spearmanr

from rqscale.config import ConfigError, load
from rqscale.models.dqvae import DQVAE
from rqscale.models.image_entropy import BINS, EPS, GREY, SIGMA, entropy_threshold, region_entropy
from tests.conftest import REPO
from tests.unit.test_dqvae import SMALL

PHOTOS = f"{REPO}/configs/debug/dq_stage1_entropy.yaml"


def entropy_of_one_region(pixels: torch.Tensor) -> float:
    """The authors' formula written out for one region's grey pixels (a flat list): Gaussian-kernel histogram
    over 32 bins in [-1, 1], normalised, entropy in nats."""
    bins = [-1 + 2 * k / (BINS - 1) for k in range(BINS)]
    pdf = [sum(math.exp(-0.5 * ((p - b) / SIGMA) ** 2) for p in pixels.tolist()) / len(pixels) for b in bins]
    total = sum(pdf) + EPS
    pdf = [q / total + EPS for q in pdf]
    return -sum(q * math.log(q) for q in pdf)


def test_region_entropy_is_the_authors_formula_per_16_by_16_region():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 48) * 2 - 1
    images[0, :, :16, :16] = -1.0  # one flat region: every pixel on the first bin's centre
    got = region_entropy(images)
    assert got.shape == (2, 2, 3)
    grey = sum(w * images[:, c] for c, w in enumerate(GREY))
    for b, i, j in [(0, 0, 0), (0, 1, 2), (1, 0, 1)]:
        want = entropy_of_one_region(grey[b, 16 * i : 16 * i + 16, 16 * j : 16 * j + 16].flatten())
        assert got[b, i, j].item() == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert got[0, 0, 0] < 1e-3 < got[0, 1, 2]  # flat scores ~0, noise scores high


def test_two_equal_halves_on_two_bin_centres_score_log_2():
    region = torch.full((1, 1, 16, 16), -1.0)
    region[..., 8:, :] = 1.0
    assert region_entropy(region).item() == pytest.approx(math.log(2), rel=1e-5)


def test_the_threshold_puts_the_asked_share_of_regions_above_it():
    entropies = torch.rand(4096)
    for ratio in (0.25, 0.5, 0.7):
        share = (entropies > entropy_threshold(entropies, ratio)).float().mean().item()
        assert share == pytest.approx(ratio, abs=1e-3)


def test_data_prep_entropy_reproduces_the_debug_config_s_threshold(tmp_path, capsys):
    from data_prep import entropy

    table = tmp_path / "thresholds.json"
    assert entropy.main(["--config", PHOTOS, "--out", str(table)]) == 0
    printed = capsys.readouterr().out
    value = float(printed.split("rqvae.dq.entropy_threshold=")[1].split()[0])
    assert value == pytest.approx(load(PHOTOS).rqvae.dq.entropy_threshold, abs=1e-5)
    percentiles = json.loads(table.read_text())
    assert list(percentiles) == [str(p) for p in range(1, 100)]
    assert percentiles["50"] == pytest.approx(value, abs=1e-6)  # fine_ratio 0.5: the median
    assert all(a <= b for a, b in zip(list(percentiles.values()), list(percentiles.values())[1:]))


def test_fine_regions_go_where_held_out_photos_have_detail():
    """The issue's correlation test: on photo crops the debug runs never drew, a region's fine assignment by the
    calibrated entropy router rises with its pixel variance (Spearman, positive and significant), and the
    held-out fine share stays near r_f."""
    from rqscale.bench.dq_detail import held_out, region_variance

    cfg = load(PHOTOS)
    images = held_out(cfg, 256)
    model = DQVAE(cfg.rqvae).eval()
    _, grain = model.encode_with_grain(images)
    rho, p = spearmanr(region_variance(images).flatten().numpy(), grain.flatten().numpy())
    assert rho > 0.3 and p < 1e-6, (rho, p)
    assert abs(grain.float().mean().item() - cfg.rqvae.dq.fine_ratio) < 0.05


def entropy_model(threshold: float = 1.5) -> DQVAE:
    torch.manual_seed(0)
    return DQVAE(load(None, [*SMALL, "rqvae.dq.router=entropy", f"rqvae.dq.entropy_threshold={threshold}"], check_files=False).rqvae)


def test_the_entropy_router_chooses_by_threshold_in_training_and_evaluation_alike():
    model, images = entropy_model(), torch.rand(4, 3, 32, 32) * 2 - 1
    images[:2, :, :16] = 0.3  # flat top halves in two images
    expected = (region_entropy(images) > 1.5).long()
    out = model.train()(images)
    assert torch.equal(out.grain, expected) and torch.equal(model.eval().encode_with_grain(images)[1], expected)
    assert expected.sum() not in (0, expected.numel())  # both grains occur, so the comparison could fail
    assert out.budget_loss.item() == 0.0  # nothing to steer: no budget loss
    assert not [n for n, p in model.named_parameters() if n.startswith("router.")]


def test_the_threshold_rides_in_the_weights_exactly_even_through_a_bf16_cast():
    stage2 = load(f"{REPO}/configs/debug/dq_stage2.yaml", ["rqvae.dq.router=entropy"], check_files=False)
    assert stage2.rqvae.dq.entropy_threshold is None  # a stage-2 config needs none: the weights carry it
    stage1 = replace(stage2.rqvae, dq=replace(stage2.rqvae.dq, entropy_threshold=1.743545))
    state = DQVAE(stage1).bfloat16().state_dict()
    assert state["router.threshold_micro_nats"].item() == 1743545
    stage2_side = DQVAE(stage2.rqvae)
    stage2_side.load_state_dict(state)
    assert stage2_side.router.threshold_micro_nats.item() == 1743545


def test_an_entropy_router_without_a_threshold_is_refused_naming_the_key_and_the_command():
    with pytest.raises(ConfigError) as err:
        load(None, [*SMALL, "rqvae.dq.router=entropy"], check_files=False)
    assert "rqvae.dq.entropy_threshold" in str(err.value) and "data_prep.entropy" in str(err.value)


@pytest.mark.parametrize("threshold", [-0.1, 3.5])  # an entropy over 32 bins lies in [0, log 32 = 3.466]
def test_a_threshold_no_entropy_can_reach_is_refused_naming_the_key(threshold):
    with pytest.raises(ConfigError, match=r"rqvae\.dq\.entropy_threshold"):
        load(None, [*SMALL, "rqvae.dq.router=entropy", f"rqvae.dq.entropy_threshold={threshold}"], check_files=False)


def test_weights_trained_with_another_threshold_are_refused_rather_than_silently_kept(tmp_path):
    from rqscale.train.stage1 import load_init_weights

    path = tmp_path / "entropy.pt"
    torch.save(entropy_model(1.5).state_dict(), path)
    load_init_weights(entropy_model(1.5), str(path), "run.init_from")  # the same threshold: accepted
    with pytest.raises(ConfigError, match=r"rqvae\.dq\.entropy_threshold=1\.500000"):
        load_init_weights(entropy_model(1.7), str(path), "run.init_from")


def test_an_unknown_router_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"rqvae\.dq\.router"):
        load(None, [*SMALL, "rqvae.dq.router=variance"], check_files=False)


def test_weights_of_the_other_router_are_refused_naming_the_router_key(tmp_path):
    from rqscale.train.stage1 import load_init_weights

    torch.manual_seed(0)
    feature = DQVAE(load(None, SMALL, check_files=False).rqvae)
    path = tmp_path / "feature.pt"
    torch.save(feature.state_dict(), path)
    with pytest.raises(ConfigError, match=r"rqvae\.dq\.router=feature"):
        load_init_weights(entropy_model(), str(path), "stage2.rqvae_checkpoint")
