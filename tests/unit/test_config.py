"""Config loading: defaults, YAML differences, overrides, and errors that name the key and the fix."""
import glob
import os
import subprocess
import sys

import pytest

from rqscale.config import ConfigError, load, save_resolved
from rqscale.config.schema import Config

from tests.conftest import DEBUG_STAGE1 as DEBUG
from tests.conftest import REPO


def test_defaults_are_the_paper_values():
    cfg = Config()
    assert cfg.rqvae.ch_mult == [1, 1, 2, 2, 4, 4] and cfg.rqvae.code_shape == [8, 8, 4]
    assert (cfg.rqvae.num_codes, cfg.rqvae.code_dim, cfg.rqvae.ema_decay) == (16384, 256, 0.99)
    assert (cfg.stage1.loss.beta, cfg.stage1.loss.lpips_weight, cfg.stage1.loss.disc_weight) == (0.25, 1.0, 0.75)
    assert (cfg.stage1.optim.lr, cfg.stage1.optim.betas) == (4e-5, [0.5, 0.9])


def test_yaml_and_overrides_layer_on_schema(tmp_path):
    cfg = load(DEBUG, ["train.max_steps=7", "stage1.optim.betas=[0.4,0.8]"])
    assert cfg.rqvae.resolution == 32 and cfg.train.max_steps == 7 and cfg.stage1.optim.betas == [0.4, 0.8]
    assert cfg.stage1.loss.beta == 0.25  # untouched keys keep schema defaults
    save_resolved(cfg, str(tmp_path / "resolved.yaml"))
    assert load(str(tmp_path / "resolved.yaml")) == cfg  # the saved config reproduces the run


@pytest.mark.parametrize(
    "override, key, words",
    [
        ("train.global_bach=16", "train.global_bach", "did you mean 'train.global_batch'"),
        ("train.max_steps=abc", "train.max_steps", "wrong type"),
        ("train.micro_batch=5", "train.micro_batch", "set train.micro_batch=16"),
        ("rqvae.code_shape=[4,4,4]", "rqvae.code_shape", "[8,8,4]"),
        ("rqvae.ema_decay=1.5", "rqvae.ema_decay", "(0, 1)"),
        ("stage1.optim.lr=-1", "stage1.optim.lr", "out of range"),
        ("stage1.optim.name=sgd", "stage1.optim.name", "adam"),
        ("stage2.optim.warmup_steps=-1", "stage2.optim.warmup_steps", "out of range"),
        ("stage1.optim.disc_lr=-1", "stage1.optim.disc_lr", "out of range"),
        ("rqvae.ch_mult=[1,0,2]", "rqvae.ch_mult", "positive"),
        ("rqvae.encoder_res_blocks=0", "rqvae.encoder_res_blocks", "out of range"),
        ("train.grad_accum=2", "train.grad_accum", "codebook EMA"),
        ("stage2.model.num_heads=5", "stage2.model.num_heads", "divisible"),
        ("stage2.loss.temperature=-0.5", "stage2.loss.temperature", "out of range"),
    ],
)
def test_bad_values_name_the_key(override, key, words):
    with pytest.raises(ConfigError) as err:
        load(DEBUG, [override])
    assert err.value.key == key
    assert words in str(err.value)


def test_missing_lpips_weights_names_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "vgg16.pth"
    with pytest.raises(ConfigError) as err:
        load(DEBUG, ["stage1.loss.lpips_random_backbone=false", f"stage1.loss.lpips_backbone={missing}"])
    assert err.value.key == "stage1.loss.lpips_backbone" and str(missing) in str(err.value)


CLI_CASES = {  # overrides, the key the message must name, more text it must hold
    "unknown key": (["rqvae.num_code=3"], "rqvae.num_code", "did you mean 'rqvae.num_codes'"),
    "wrong type": (["train.global_batch=many"], "train.global_batch", "many"),
    "inconsistent batch": (["train.micro_batch=8"], "train.micro_batch", "set train.micro_batch=16"),
    "missing lpips weights": (["stage1.loss.lpips_random_backbone=false", "stage1.loss.lpips_backbone=/no/such/vgg16.pth"],
                              "stage1.loss.lpips_backbone", "/no/such/vgg16.pth"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_rejects_bad_config_with_one_line(case, tmp_path):
    overrides, key, detail = CLI_CASES[case]
    proc = subprocess.run(
        [sys.executable, "-m", "rqscale.train", DEBUG, f"run.output_dir={tmp_path}", *overrides],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert proc.returncode == 2
    assert f"config key '{key}'" in proc.stderr and detail in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0  # one clear message
    assert not os.listdir(tmp_path)  # rejected before any run directory was written


def test_missing_config_file_is_clear():
    with pytest.raises(ConfigError, match="does not exist"):
        load("/no/such/config.yaml")


STAGE1_CONFIGS = ["imagenet.yaml", "ffhq.yaml", "lsun_finetune.yaml"]


@pytest.mark.parametrize("name", STAGE1_CONFIGS)
def test_stage1_paper_configs_validate(name):
    path = os.path.join(REPO, "configs", "stage1", name)
    with open(path) as f:
        assert f.readline().startswith("# python -m rqscale.train configs/stage1/" + name)
    cfg = load(path, ["stage1.loss.lpips_random_backbone=true"])  # no VGG weights on CI machines
    assert cfg.train.global_batch == 128 and cfg.rqvae.code_shape == [8, 8, 4]


def test_lsun_finetune_recipe():
    cfg = load(os.path.join(REPO, "configs", "stage1", "lsun_finetune.yaml"), ["stage1.loss.lpips_random_backbone=true"])
    assert cfg.stage1.optim.lr == 4e-6  # A.3
    ffhq = load(os.path.join(REPO, "configs", "stage1", "ffhq.yaml"), ["stage1.loss.lpips_random_backbone=true"])
    assert ffhq.rqvae.num_codes == 2048 and ffhq.rqvae.attn_resolutions == [16]


def test_missing_init_weights_names_the_file():
    with pytest.raises(ConfigError) as err:
        load(DEBUG, ["run.init_from=/no/such/rqvae.pt"])
    assert err.value.key == "run.init_from" and "/no/such/rqvae.pt" in str(err.value)


def _leaves(node, prefix=""):
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _leaves(value, path + ".")
        else:
            yield path, value


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)))
def test_config_files_hold_only_differences(path):
    from omegaconf import OmegaConf

    defaults = OmegaConf.to_container(OmegaConf.structured(Config))
    written = OmegaConf.to_container(OmegaConf.load(path))
    for key, value in _leaves(written):
        assert OmegaConf.select(OmegaConf.create(defaults), key) != value, f"{path}: {key} repeats the schema default"


@pytest.mark.parametrize("overrides, key, words", [
    (["engine.zero_stage=3"], "engine.zero_stage", "adaptive GAN weight"),
    (["engine.zero_stage=5"], "engine.zero_stage", "not a ZeRO stage"),
    (["engine.precision=fp16"], "engine.precision", "one of bf16, fp32"),
    (["engine.offload_params=cpu"], "engine.offload_params", "needs ZeRO-3"),
    (["train.num_workers=2", "train.micro_batch=8", "train.min_workers=3"], "train.min_workers", "<= train.num_workers"),
    (["train.num_workers=4", "train.micro_batch=4", "train.min_workers=3"], "train.min_workers", "3 workers"),
    (["checkpoint.keep=0"], "checkpoint.keep", "> 0"),
])
def test_engine_and_scaling_errors_name_the_key(overrides, key, words):
    with pytest.raises(ConfigError) as err:
        load(DEBUG, overrides)
    assert err.value.key == key and words in str(err.value)


def test_batch_plan_keeps_the_global_batch_under_resizes():
    from rqscale.config.validate import batch_plan, zero_stage
    from tests.conftest import DEBUG_STAGE2

    stage2 = load(DEBUG_STAGE2, ["train.num_workers=2", "train.micro_batch=8", "train.global_batch=32", "train.grad_accum=2",
                                 "train.min_workers=1"], check_files=False)
    assert [batch_plan(stage2, w) for w in (1, 2, 4)] == [(8, 4), (8, 2), (8, 1)]
    stage1 = load(DEBUG, ["train.num_workers=2", "train.micro_batch=8"])
    assert [batch_plan(stage1, w) for w in (1, 2)] == [(16, 1), (8, 1)]  # stage 1: accumulation stays 1
    assert zero_stage(stage2) == 3 and zero_stage(stage1) == 1


def _stage2(*overrides):
    from tests.conftest import DEBUG_STAGE2

    return load(DEBUG_STAGE2, list(overrides), check_files=False)


def test_resubmitting_on_fewer_workers_needs_only_num_workers():
    """A 2-worker stage-2 run (global 32 = micro 16 x 2 workers) resubmitted with train.num_workers=1
    alone accumulates 2 micro-batches; the stored config keeps grad_accum unset, so it can move again."""
    from rqscale.config import batch_plan, from_yaml_text, to_yaml

    two = _stage2("train.num_workers=2", "train.micro_batch=16")
    one = _stage2("train.num_workers=2", "train.micro_batch=16", "train.num_workers=1")
    assert (two.train.global_batch, batch_plan(two, 2), batch_plan(one, 1)) == (32, (16, 1), (16, 2))
    assert one.train.grad_accum is None and batch_plan(from_yaml_text(to_yaml(one)), 1) == (16, 2)
    assert batch_plan(_stage2("train.num_workers=1", "train.micro_batch=16", "train.grad_accum=2"), 1) == (16, 2)


@pytest.mark.parametrize("overrides, key, fix", [
    (["train.num_workers=1", "train.micro_batch=16", "train.grad_accum=1"], "train.grad_accum",
     "drop train.grad_accum (it is derived: 2 here) or set train.grad_accum=2"),
    (["train.num_workers=1", "train.micro_batch=12"], "train.micro_batch", "set train.micro_batch=8 or 16, or train.global_batch=24 or 36"),
    (["train.num_workers=3", "train.micro_batch=16"], "train.num_workers", "set train.num_workers=2, or train.global_batch=48"),
    (["train.num_workers=4", "train.micro_batch=8", "train.min_workers=3"], "train.min_workers", "set train.min_workers=4"),
])
def test_a_batch_that_cannot_be_made_whole_is_refused_with_the_fix(overrides, key, fix):
    with pytest.raises(ConfigError) as err:
        _stage2(*overrides)
    assert err.value.key == key and fix in err.value.fix, str(err.value)
    assert "\n" not in str(err.value)


def test_shards_alone_train_from_shards(tmp_path, monkeypatch):
    from rqscale.config import data_kind
    from rqscale.data import pipeline

    cfg = load(DEBUG, ["data.shards=s3://bucket/digits/manifest.json"])
    assert cfg.data.kind == "webdataset" == data_kind(cfg)
    save_resolved(cfg, str(tmp_path / "resolved.yaml"))
    assert load(str(tmp_path / "resolved.yaml")) == cfg
    assert load(DEBUG, ["data.shards=s3://b/manifest.json", "data.kind=webdataset"]).data.kind == "webdataset"  # still accepted
    assert load(DEBUG).data.kind == "bundled"

    class ReadsShards(Exception):
        pass

    def load_shards(url):
        raise ReadsShards(url)

    monkeypatch.setattr(pipeline, "load_shards", load_shards)  # the training data's first read, stopped there
    cfg.data.kind = None  # also a Config built in code, never through load(): the pipeline derives the kind itself
    with pytest.raises(ReadsShards, match="s3://bucket/digits/manifest.json"):
        pipeline.RankBatches(cfg, 0, 1, 1)


def test_bundled_kind_with_shards_is_refused():
    with pytest.raises(ConfigError) as err:
        load(DEBUG, ["data.kind=bundled", "data.shards=s3://bucket/digits/manifest.json"])
    assert err.value.key == "data.kind" and "drop data.kind" in err.value.fix
