"""A model family's options are refused where they do not apply, naming the flag or key: Draft-and-Revise
options on an autoregressive checkpoint, and a run resumed under a config of another family (or any
other change to the weights' shapes), which is refused before any worker starts."""
import os

import pytest

from rqscale.config import ConfigError, load, save_resolved
from rqscale.sampling.contextual_flags import DraftReviseFlags
from rqscale.train import checkpoint as ckpt
from rqscale.train.in_process import check_same_model, run_uri_of
from tests.conftest import DEBUG_STAGE2, REPO

DEBUG_CONTEXTUAL = f"{REPO}/configs/debug/contextual.yaml"


def written_run(tmp_path, config: str, *overrides):
    """A run directory holding one complete checkpoint of `config` (its config.yaml, as a run writes it)."""
    cfg = load(config, [f"run.output_dir={tmp_path}", "run.name=r", *overrides], check_files=False)
    directory = os.path.join(run_uri_of(cfg), ckpt.checkpoint_name(4))
    save_resolved(cfg, os.path.join(directory, "config.yaml"))
    ckpt.mark_complete(run_uri_of(cfg), 4, 1)
    return cfg


@pytest.mark.parametrize("written, resumed, key", [
    (DEBUG_CONTEXTUAL, DEBUG_STAGE2, "stage2.model.kind"),  # an AR config on a contextual run
    (DEBUG_STAGE2, DEBUG_CONTEXTUAL, "stage2.model.kind"),  # and the reverse
])
def test_a_run_resumed_under_the_other_family_is_refused(tmp_path, written, resumed, key):
    before = written_run(tmp_path, written)
    check_same_model(before)  # the same config resumes
    after = load(resumed, [f"run.output_dir={tmp_path}", "run.name=r"], check_files=False)
    with pytest.raises(ConfigError, match=f"'{key}'.*checkpoint_00000004.*{key}={before.stage2.model.kind}") as err:
        check_same_model(after)
    assert f"set {key}={before.stage2.model.kind} to resume it, or give the new model its own run.name" in str(err.value)


def test_a_resumed_run_may_change_what_does_not_shape_the_weights(tmp_path):
    written_run(tmp_path, DEBUG_CONTEXTUAL)
    same_shapes = load(DEBUG_CONTEXTUAL, [f"run.output_dir={tmp_path}", "run.name=r", "stage2.model.resid_dropout=0.2",
                                          "train.max_steps=900"], check_files=False)
    check_same_model(same_shapes)
    wider = load(DEBUG_CONTEXTUAL, [f"run.output_dir={tmp_path}", "run.name=r", "stage2.model.embed_dim=192"], check_files=False)
    with pytest.raises(ConfigError, match="stage2.model.embed_dim=128"):
        check_same_model(wider)


def test_draft_and_revise_options_need_a_contextual_checkpoint():
    ar = load(DEBUG_STAGE2, check_files=False)
    with pytest.raises(ValueError, match="--draft-strategy, --save-draft: these flags need a contextual checkpoint"):
        DraftReviseFlags(draft_strategy="top-c").check_model(ar, {"--inpaint": None, "--save-draft": True})
    with pytest.raises(ValueError, match="--draft-cfg-scale: this flag needs a contextual checkpoint"):
        DraftReviseFlags(draft_cfg_scale=1.5).check_model(ar, {})
    DraftReviseFlags().check_model(ar, {"--save-draft": False})  # nothing contextual asked for


@pytest.mark.parametrize("flags, message", [
    (DraftReviseFlags(draft_strategy="best"), "--draft-strategy 'best': use one of random, top-c, top-c-50"),
    (DraftReviseFlags(draft_temperature=(0.0,)), "--draft-temperature must be > 0"),
    (DraftReviseFlags(draft_top_p=(1.5,)), "--draft-top-p must be in (0, 1]"),
    (DraftReviseFlags(revise_iterations=-1), "--revise-iterations must be >= 0"),
])
def test_bad_draft_and_revise_values_name_their_flag(flags, message):
    with pytest.raises(ValueError) as err:
        flags.check()
    assert message in str(err.value)


def test_draft_and_revise_settings_are_checked_for_contextual_models_only():
    """An autoregressive config never reads stage2.sampling.draft_steps, so a code map smaller than its default
    (e.g. a stage-1 config's) must not be refused over it."""
    load(DEBUG_STAGE2, ["stage2.sampling.draft_steps=1000"], check_files=False)
    with pytest.raises(ConfigError, match="'stage2.sampling.draft_steps': 1000 groups for 64 positions"):
        load(DEBUG_CONTEXTUAL, ["stage2.sampling.draft_steps=1000"], check_files=False)
