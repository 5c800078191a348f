"""`python -m rqscale.convert official`: the authors' released RQ-VAE and RQ-Transformer become rqscale's files,
and rqscale then computes what the authors' code computed. The fixtures (tests/fixtures/official, made once by
scripts/official_fixtures.py with kakaobrain/rq-vae-transformer) hold tiny random-weight models in the authors'
release layout and their outputs; these tests need none of the authors' code.

Tolerances: codes and sampled codes must be identical; latents, reconstructions and logits agree to 1e-5 of
their largest magnitude in fp32 (rqscale's attention runs its own kernel, SDPA or the CPU math path, and sums
in another order than the authors' bmm: rounding only, measured ~3e-7)."""
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from rqscale.convert.errors import ConversionError
from rqscale.convert.official import convert
from rqscale.sampling.checkpoint import load_consolidated
from rqscale.sampling.filters import SamplingParams
from rqscale.sampling.sampler import sample_codes
from tests.conftest import REPO

FIXTURES = f"{REPO}/tests/fixtures/official"
KINDS = ("class", "text", "uncond")
RELATIVE = 1e-5


@pytest.fixture(scope="module")
def expected():
    return torch.load(f"{FIXTURES}/expected.pt", weights_only=True)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = {}
    for kind in KINDS:
        target = tmp_path_factory.mktemp(kind)
        report = convert(f"{FIXTURES}/stage1", f"{FIXTURES}/{kind}", str(target), tokenizer=f"{FIXTURES}/text")
        out[kind] = (target, report)
    return out


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return (got.reshape(want.shape) - want).abs().max().item() <= RELATIVE * want.abs().max().item()


def condition(kind: str, expected) -> torch.Tensor | None:
    return {"class": expected["class/cond"].view(-1), "text": expected["text/cond"], "uncond": None}[kind]


def test_the_rq_vae_computes_the_authors_codes_latents_and_reconstructions(converted, expected):
    _, rqvae, _ = load_consolidated(str(converted["class"][0] / "rqtransformer.pt"))
    with torch.no_grad():
        codes = rqvae.encode(expected["images"])
        assert torch.equal(codes, expected["codes"])
        assert close(rqvae.latents(expected["images"]), expected["latents"])
        assert close(rqvae.decode_codes(codes), expected["reconstructions"])


@pytest.mark.parametrize("kind", KINDS)
def test_the_rq_transformer_gives_the_authors_logits_under_teacher_forcing(converted, expected, kind):
    _, _, model = load_consolidated(str(converted[kind][0] / "rqtransformer.pt"))
    with torch.no_grad():
        out = model(expected["teacher_codes"], condition(kind, expected))
    assert close(out.logits, expected[f"{kind}/logits"])
    if kind == "text":
        assert close(out.text_logits, expected["text/text_logits"])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name, top_k, top_p", [("plain", None, None), ("filtered", 8, 0.8)])
def test_sampling_from_the_same_seed_draws_the_authors_codes(converted, expected, kind, name, top_k, top_p):
    """Both samplers draw one multinomial per position and depth, in the same order, from the CPU generator."""
    _, _, model = load_consolidated(str(converted[kind][0] / "rqtransformer.pt"))
    g = torch.Generator().manual_seed(123)
    codes = sample_codes(model, 4, condition(kind, expected), SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p), generator=g)
    assert torch.equal(codes.reshape(expected[f"{kind}/sampled_{name}"].shape), expected[f"{kind}/sampled_{name}"])


def test_ema_weights_are_the_default_and_raw_ones_a_flag(converted, expected, tmp_path):
    assert converted["class"][1]["stage2"]["weights"] == "state_dict_ema"  # the class fixture holds both
    convert(f"{FIXTURES}/stage1", f"{FIXTURES}/class", str(tmp_path), weights="raw")
    _, _, model = load_consolidated(str(tmp_path / "rqtransformer.pt"))
    with torch.no_grad():
        raw = model(expected["teacher_codes"], condition("class", expected)).logits
    assert close(raw, expected["class_raw/logits"]) and not close(raw, expected["class/logits"])
    # The authors' stage-1 trainer keeps no EMA: --weights ema concerns the RQ-Transformer, and one without is refused.
    assert convert(f"{FIXTURES}/stage1", None, str(tmp_path / "s1"), weights="ema")["stage1"]["weights"] == "state_dict"
    with pytest.raises(ConversionError, match="state_dict_ema.*--weights raw"):
        convert(f"{FIXTURES}/stage1", f"{FIXTURES}/uncond", str(tmp_path / "ema"), weights="ema")
    assert not (tmp_path / "ema").exists()  # refused before anything was written


def test_the_report_names_every_dropped_and_filled_tensor(converted):
    report = converted["class"][1]
    assert len([k for k in report["stage1"]["dropped"] if k.startswith("quantizer.codebooks.")]) == 7  # 2 copies x 3 + pad row
    assert list(report["stage2"]["dropped"]) == ["pos_emb_hw[15]"]
    assert list(report["stage2"]["filled"]) == ["class_emb.weight[10]"]  # the null class of guidance
    assert list(converted["text"][1]["stage2"]["filled"]) == ["pos_spatial[0]"]


def test_the_config_plans_the_parameters_the_file_holds(converted):
    from rqscale.config import load
    from rqscale.planning import stage2_params

    target, report = converted["class"]
    cfg = load(str(target / "config.yaml"))
    assert stage2_params(cfg)["params_total"] == report["stage2"]["parameters"]
    # A class model's one new row (the null class) and one dropped row (the last position) cancel out.
    assert report["stage2"]["parameters"] == report["stage2"]["source_parameters"]
    assert cfg.stage2.sampling.top_k == 8 and cfg.stage2.model.cond_dropout == 0.0


def test_a_text_model_brings_the_authors_tokenizer(converted, expected):
    from rqscale.data.text import tokenizer_of
    from rqscale.config import load

    cfg = load(str(converted["text"][0] / "config.yaml"))
    ids = tokenizer_of(cfg).encode_batch(["a red bird on a branch"])
    assert torch.equal(ids[0], expected["text/cond"][0])  # the fixture's first caption, as the authors' BPE cut it


def stage_copy(tmp_path, kind: str) -> tuple:
    """A writable copy of a fixture stage: (directory, its config dict, its model dict)."""
    target = tmp_path / kind
    shutil.copytree(f"{FIXTURES}/{kind}", target)
    return target, yaml.safe_load((target / "config.yaml").read_text()), torch.load(target / "model.pt", weights_only=True)


def rewrite(directory, config=None, model=None) -> None:
    if config is not None:
        (directory / "config.yaml").write_text(yaml.safe_dump(config))
    if model is not None:
        torch.save(model, directory / "model.pt")


def test_an_unknown_tensor_is_refused_naming_it(tmp_path):
    directory, _, model = stage_copy(tmp_path, "class")
    model["state_dict"]["body_transformer.blocks.0.attn.rel_bias"] = torch.zeros(4)
    model.pop("state_dict_ema")
    rewrite(directory, model=model)
    with pytest.raises(ConversionError, match=r"'body_transformer\.blocks\.0\.attn\.rel_bias'"):
        convert(f"{FIXTURES}/stage1", str(directory), str(tmp_path / "out"))


def test_a_shape_that_does_not_fit_the_config_is_refused_naming_the_authors_key(tmp_path):
    directory, config, model = stage_copy(tmp_path, "class")
    config["arch"]["embed_dim"] = 64  # the file's tensors are 32 wide
    rewrite(directory, config=config)
    with pytest.raises(ConversionError, match="shape") as err:
        convert(f"{FIXTURES}/stage1", str(directory), str(tmp_path / "out"))
    assert err.value.key in model["state_dict"]


def test_an_unknown_rq_vae_tensor_is_refused_by_the_authors_name(tmp_path):
    directory, _, model = stage_copy(tmp_path, "stage1")
    model["state_dict"]["encoder.down.0.block.0.temb_proj.weight"] = torch.zeros(32, 512)
    rewrite(directory, model=model)
    with pytest.raises(ConversionError) as err:
        convert(str(directory), None, str(tmp_path / "out"))
    assert err.value.key == "encoder.down.0.block.0.temb_proj.weight"


def test_a_missing_config_value_is_refused_naming_it(tmp_path):
    directory, config, _ = stage_copy(tmp_path, "class")
    del config["arch"]["embed_dim"]
    rewrite(directory, config=config)
    with pytest.raises(ConversionError) as err:
        convert(f"{FIXTURES}/stage1", str(directory), str(tmp_path / "out"))
    assert err.value.key == "arch.embed_dim"


def test_fine_tuning_on_another_rq_vae_s_codebook_is_refused(converted):
    from rqscale.config import ConfigError, load
    from rqscale.models import build_stage2_model
    from rqscale.train.stage2 import load_init_transformer

    target = converted["class"][0]
    cfg = load(str(target / "config.yaml"))
    r = cfg.rqvae
    model = build_stage2_model(cfg.stage2.model, r.code_shape, r.num_codes, r.code_dim)  # its codebook: zeros
    with pytest.raises(ConfigError, match="codebook"):
        load_init_transformer(model, str(target / "rqtransformer.pt"))


@pytest.mark.parametrize("path, value, named", [
    (("arch", "body", "block", "gelu"), "v2", "arch.body.block.gelu"),
    (("arch", "cumsum_depth_ctx"), False, "arch.cumsum_depth_ctx"),
    (("arch", "head", "block", "n_head"), 8, "arch.head.block.n_head"),
    (("arch", "rotary"), True, "arch.rotary"),  # a key the converter does not know
])
def test_a_config_value_rqscale_cannot_express_is_refused_naming_the_key(tmp_path, path, value, named):
    directory, config, _ = stage_copy(tmp_path, "class")
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    rewrite(directory, config=config)
    with pytest.raises(ConversionError) as err:
        convert(f"{FIXTURES}/stage1", str(directory), str(tmp_path / "out"))
    assert err.value.key == named


def test_a_text_model_without_the_tokenizer_is_refused_naming_the_flag(tmp_path):
    with pytest.raises(ConversionError, match="--tokenizer"):
        convert(f"{FIXTURES}/stage1", f"{FIXTURES}/text", str(tmp_path))


def test_a_file_holding_pickled_objects_is_refused_not_run(tmp_path):
    from rqscale.utils.safe_load import UnsafeCheckpointError

    directory, _, model = stage_copy(tmp_path, "stage1")
    model["trainer"] = torch.optim.SGD  # a class reference: unpickling it would import and call code
    rewrite(directory, model=model)
    with pytest.raises(UnsafeCheckpointError):
        convert(str(directory), None, str(tmp_path / "out"))


def test_the_cli_prints_one_line_on_bad_input_and_a_summary_otherwise(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "rqscale.convert", "official", *a], capture_output=True,  # noqa: E731
                                    text=True, cwd=REPO, timeout=120)
    bad = run("--stage1", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert bad.returncode == 2 and "nowhere" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    good = run("--stage1", f"{FIXTURES}/stage1", "--stage2", f"{FIXTURES}/uncond", "--out", str(tmp_path / "o"))
    assert good.returncode == 0, good.stderr
    assert "stage2: 76 tensors read" in good.stdout and (tmp_path / "o" / "rqtransformer.pt").exists()


@pytest.mark.slow
def test_the_converted_pair_fine_tunes_from_its_weights(converted, tmp_path):
    """python -m rqscale.train OUT/config.yaml run.init_from=OUT/rqtransformer.pt, one step at a negligible learning
    rate: the run's exported weights are the converted ones, so it started from them (random ones would not be)."""
    from rqscale.config import load
    from rqscale.train.in_process import run

    target = converted["class"][0]
    cfg = load(str(target / "config.yaml"), [f"run.init_from={target / 'rqtransformer.pt'}", f"run.output_dir={tmp_path}",
                                             "data.bundled_set=digits", "train.global_batch=8", "train.micro_batch=8",
                                             "train.num_workers=1", "train.max_steps=1", "stage2.optim.lr=1e-12",
                                             "engine.precision=fp32"])
    summary = run(cfg, log=print)
    _, _, tuned = load_consolidated(summary["weights"])
    _, _, start = load_consolidated(str(target / "rqtransformer.pt"))
    for (name, a), b in zip(tuned.state_dict().items(), start.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
