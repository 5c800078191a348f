"""Evaluation metrics against independent references: FID (scipy sqrtm), precision/recall (brute force),
IS; the Inception weights file, the reference cache. Features come from a small fixed TorchScript
conv net going through the same torchmetrics classes the Inception path uses."""
import json
import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial
import torch
from torch import nn

from rqscale.eval.features import INCEPTION_FILE, ExtractorSpec, extract, load_extractor, resolve_spec
from rqscale.eval.metrics import fid, frechet_distance, gaussian_stats, inception_score
from rqscale.eval.precision_recall import knn_radii, precision_recall


class SmallExtractor(nn.Module):
    """uint8 (N, 3, H, W) -> 32 features: two strided random convs, 4x4 average pool, a projection,
    scaled x100 so that, read as logits for IS, they spread beyond a near-uniform softmax."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        # A plain matrix, not nn.Linear: a DeepSpeed ZeRO-3 engine built in this process (several ranks or
        # param offload) leaves F.linear patched with an autograd Function that TorchScript cannot compile.
        self.proj = nn.Parameter(torch.randn(16 * 16, 32) / 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 127.5 - 1.0
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return 100.0 * (nn.functional.adaptive_avg_pool2d(x, 4).flatten(1) @ self.proj)


def save_small_extractor(path) -> str:
    torch.manual_seed(1234)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript: what --feature-extractor documents
        torch.jit.script(SmallExtractor().eval()).save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def extractor_file(tmp_path_factory):
    return save_small_extractor(tmp_path_factory.mktemp("extractor") / "small.pt")


@pytest.fixture(scope="module")
def digits_uint8():
    from rqscale.data.bundled import digits

    images, _ = digits(32)
    return images.add(1).mul(127.5).round().to(torch.uint8)


def features_of(extractor_file, images):
    return extract(load_extractor(ExtractorSpec("torchscript", extractor_file)), images)[0]


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula with scipy's general matrix square root (Heusel et al. 2017)."""
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def noisy(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=gen) * sigma * 255
    return (images.float() + noise).clamp(0, 255).round().to(torch.uint8)


def test_fid_of_a_set_against_itself_is_zero(extractor_file, digits_uint8):
    feats = features_of(extractor_file, digits_uint8)
    assert abs(fid([feats], [feats], feats.shape[1])) < 1e-6 * float(feats.var(0).sum())


def test_fid_grows_with_added_noise(extractor_file, digits_uint8):
    real = features_of(extractor_file, digits_uint8[:900])
    scores = [fid([real], [features_of(extractor_file, noisy(digits_uint8[900:], s))], real.shape[1]) for s in (0.0, 0.05, 0.15, 0.4)]
    assert all(a < b for a, b in zip(scores, scores[1:])), scores


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12))
    b = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12)) + 0.5
    ours = frechet_distance(*gaussian_stats(torch.from_numpy(a)), *gaussian_stats(torch.from_numpy(b)))
    assert ours == pytest.approx(scipy_fid(a, b), rel=1e-6)


def test_torchmetrics_fid_matches_scipy_on_the_same_features(extractor_file, digits_uint8):
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = digits_uint8[:800], noisy(digits_uint8[800:1600], 0.1)
    fr, ff = features_of(extractor_file, real), features_of(extractor_file, fake)
    reference = scipy_fid(fr.double().numpy(), ff.double().numpy())
    chunked = fid([fr[:300], fr[300:]], [ff[:500], ff[500:]], fr.shape[1])  # the path evaluate takes
    direct = FrechetInceptionDistance(feature=load_extractor(ExtractorSpec("torchscript", extractor_file)).net)  # probed
    direct.update(real, real=True)
    direct.update(fake, real=False)
    assert chunked == pytest.approx(reference, rel=1e-4)
    assert float(direct.compute()) == pytest.approx(reference, rel=1e-4)


def brute_force_pr(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple:
    d_rr, d_ff = (scipy.spatial.distance.cdist(x, x) for x in (real, fake))
    r_real, r_fake = np.sort(d_rr, 1)[:, k], np.sort(d_ff, 1)[:, k]
    d_fr = scipy.spatial.distance.cdist(fake, real)
    return float((d_fr <= r_real[None]).any(1).mean()), float((d_fr.T <= r_fake[None]).any(1).mean())


def test_precision_recall_matches_brute_force_and_extremes():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(300, 8)), rng.normal(size=(250, 8)) * 1.5 + 0.7
    ours = precision_recall(torch.from_numpy(real), torch.from_numpy(fake))
    assert ours == pytest.approx(brute_force_pr(real, fake), abs=1e-9)
    same = torch.from_numpy(real)
    assert precision_recall(same, same) == (1.0, 1.0)
    assert precision_recall(same, same + 1000.0) == (0.0, 0.0)
    with pytest.raises(ValueError, match="needs more than 3"):
        knn_radii(same[:3])


@pytest.mark.filterwarnings("ignore:std\\(\\):UserWarning")  # one split has no spread
def test_inception_score_extremes():
    assert inception_score(torch.zeros(100, 10))[0] == pytest.approx(1.0)  # p(y|x) = p(y): no information
    confident = torch.eye(10).repeat(20, 1) * 50.0  # every class equally often, each image certain
    assert inception_score(confident, splits=1)[0] == pytest.approx(10.0, rel=1e-6)
    logits = torch.randn(100, 10)
    assert inception_score(logits, seed=3) == inception_score(logits, seed=3)  # the split shuffle is seeded


def test_missing_inception_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FileNotFoundError) as err:
        resolve_spec(None, None)
    assert INCEPTION_FILE in str(err.value) and str(tmp_path / "torch") in str(err.value) and "--inception-weights" in str(err.value)
    with pytest.raises(FileNotFoundError, match="elsewhere.pth"):
        resolve_spec(None, str(tmp_path / "elsewhere.pth"))


def test_inception_extractor_reads_a_local_weights_file(tmp_path, monkeypatch):
    """The default path end to end, with random weights in torch-fidelity's layout (the real file
    cannot be downloaded here): one pass gives 2048-d pool features and 1008 logits."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
    from torchmetrics.image.fid import NoTrainInceptionV3

    with monkeypatch.context() as m:  # build the architecture without any weights, then save it
        m.setattr(tf_inception.torch, "load", lambda *a, **k: {})
        m.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        net = NoTrainInceptionV3("inception-v3-compat", ["2048"], "unused")
    torch.save(net.state_dict(), tmp_path / INCEPTION_FILE)
    spec = resolve_spec(None, str(tmp_path / INCEPTION_FILE))
    pool, logits = extract(load_extractor(spec), torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008) and torch.isfinite(pool).all()
    assert spec.identity().startswith("inception-v3-compat:" + INCEPTION_FILE)


def write_digit_shards(out, count: int = 300) -> str:
    """The demo's digit shards (data_prep.demo), only the first `count` digits."""
    import itertools

    from data_prep.demo import digit_items
    from data_prep.shards import write_shards

    write_shards(itertools.islice(digit_items(), count), str(out), "test-digits", prefix="digits", max_samples=128, total=count)
    return str(out / "manifest.json")


def test_reference_features_are_cached(tmp_path, extractor_file, digits_uint8):
    from rqscale.evaluate import main

    manifest = write_digit_shards(tmp_path / "shards")
    np.savez(tmp_path / "samples.npz", images=noisy(digits_uint8[300:500], 0.1).permute(0, 2, 3, 1).numpy(), labels=np.zeros(200))
    args = ["samples", "--samples-npz", str(tmp_path / "samples.npz"), "--reference", manifest, "--feature-extractor", extractor_file,
            "--cache-dir", str(tmp_path / "cache"), "--chunk-size", "64", "--device", "cpu"]
    reports = []
    for i, extra in enumerate([[], [], ["--num-reference", "200"]]):
        assert main(args + extra + ["--out", str(tmp_path / f"r{i}.json")]) == 0
        reports.append(json.loads((tmp_path / f"r{i}.json").read_text()))
    first, second, smaller = reports
    assert not first["reference"]["cache_hit"] and second["reference"]["cache_hit"]
    assert second["reference"]["cache_file"] == first["reference"]["cache_file"] and first["reference"]["count"] == 300
    assert second["fid"] == pytest.approx(first["fid"], rel=1e-9) and second["precision"] == first["precision"]
    assert not smaller["reference"]["cache_hit"] and smaller["reference"]["cache_file"] != first["reference"]["cache_file"]
    assert all(math.isfinite(r[k]) for r in reports for k in ("fid", "is", "precision", "recall"))
