"""No code runs from a checkpoint file we were given: a file whose pickle would create a marker file
on disk is refused, with an error naming it, by `python -m rqscale.sample`, `python -m rqscale.evaluate`
and a resume (both rqscale's rank_<r>.pt and DeepSpeed's own shards), and the marker never appears.

The resume cases share one 2-step run of the debug stage-2 config on a randomly initialised RQ-VAE
(what is refused is the file format, not the weights), copied per test."""
import os
import pathlib
import shutil

import pytest
import torch

from rqscale.config import load
from rqscale.sampling.checkpoint import FORMAT
from rqscale.utils.safe_load import UnsafeCheckpointError
from tests.conftest import DEBUG_STAGE1, DEBUG_STAGE2


class Payload:
    """Unpickling this calls Path.touch(marker): proof that code from the file ran."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def poison(path, marker: pathlib.Path, **fields) -> str:
    """Write a checkpoint at `path` carrying the payload (next to `fields`, to look like the real thing)."""
    torch.save({**fields, "payload": Payload(marker)}, str(path))
    return str(path)


def test_the_payload_is_live(tmp_path):
    """Control: an unsafe load of the same kind of file does run the payload."""
    marker = tmp_path / "ran"
    torch.load(poison(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


def test_sample_refuses_a_pickled_payload(tmp_path, capsys):
    from rqscale.sample import main

    marker = tmp_path / "ran"
    evil = poison(tmp_path / "evil.pt", marker, format=FORMAT, config="stage: stage2\n")
    code = main(["--checkpoint", evil, "--num-samples", "1", "--device", "cpu", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists()
    assert err.count("\n") == 1 and f"'{evil}' is not a plain-tensor checkpoint" in err, err


def test_evaluate_refuses_a_pickled_payload(tmp_path, capsys):
    from rqscale.evaluate import main

    marker = tmp_path / "ran"
    evil = poison(tmp_path / "evil.pt", marker, format=FORMAT, config="stage: stage2\n")
    extractor = tmp_path / "extractor.pt"
    extractor.write_bytes(b"")  # only its existence is checked before the checkpoint is read
    code = main(["samples", "--checkpoint", evil, "--num-samples", "2", "--feature-extractor", str(extractor),
                 "--local", "--out", str(tmp_path / "report.json")])
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists()
    assert err.count("\n") == 1 and f"'{evil}' is not a plain-tensor checkpoint" in err, err


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory):
    """(overrides, run dir) of a finished 2-step stage-2 run with complete checkpoints at steps 1 and 2."""
    from rqscale.models import RQVAE
    from rqscale.train.in_process import run

    root = tmp_path_factory.mktemp("safe_loads")
    rqvae = root / "rqvae.pt"
    torch.save(RQVAE(load(DEBUG_STAGE1, []).rqvae).state_dict(), rqvae)
    overrides = [f"run.output_dir={root}", "run.name=built", f"stage2.rqvae_checkpoint={rqvae}",
                 "checkpoint.every_steps=1"]
    run(load(DEBUG_STAGE2, overrides + ["train.max_steps=2"]), log=lambda line: None)
    return overrides, root / "built"


def resume(two_step_run, tmp_path, tamper) -> None:
    """Copy the run, let `tamper(checkpoint dir)` change files, re-mark it complete, resume to step 3."""
    from rqscale.train import checkpoint as ckpt
    from rqscale.train.in_process import run

    overrides, built = two_step_run
    shutil.copytree(built, tmp_path / "copy")
    tamper(tmp_path / "copy" / ckpt.checkpoint_name(2))
    ckpt.mark_complete(str(tmp_path / "copy"), 2, 1)  # the marker lists sizes: without this it is "incomplete"
    run(load(DEBUG_STAGE2, overrides + [f"run.output_dir={tmp_path}", "run.name=copy", "train.max_steps=3"]),
        log=lambda line: None)


def test_resume_refuses_a_pickled_rank_state(two_step_run, tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(UnsafeCheckpointError, match=r"checkpoint_00000002/rank_0\.pt' is not a plain-tensor checkpoint"):
        resume(two_step_run, tmp_path, lambda d: poison(d / "rank_0.pt", marker, step=2, world_size=1))
    assert not marker.exists()


@pytest.mark.parametrize("name", ["engine/zero_pp_rank_0_mp_rank_00_model_states.pt", "engine/zero/.hidden.pt"])
def test_resume_refuses_a_pickled_deepspeed_file(two_step_run, tmp_path, name):
    """DeepSpeed itself unpickles with weights_only=False: its files are checked before it sees them,
    including names only its universal-checkpoint loader would pick up (any *.pt it lists)."""
    marker = tmp_path / "ran"

    def tamper(directory):
        os.makedirs(os.path.dirname(directory / name), exist_ok=True)
        poison(directory / name, marker)

    with pytest.raises(UnsafeCheckpointError, match=rf"{os.path.basename(name)}' is not a plain-tensor checkpoint"):
        resume(two_step_run, tmp_path, tamper)
    assert not marker.exists()


@pytest.mark.parametrize("convert", ["to_universal", "fp32_state_dict_from_checkpoint"])
def test_deepspeed_converters_refuse_a_pickled_shard(two_step_run, tmp_path, convert):
    """The elastic-resize conversion (ds_to_universal) and export (zero_to_fp32) unpickle every shard too."""
    import rqscale.engine

    marker = tmp_path / "ran"
    shutil.copytree(two_step_run[1] / "checkpoint_00000002", tmp_path / "ckpt")
    poison(tmp_path / "ckpt" / "engine" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", marker)
    with pytest.raises(UnsafeCheckpointError, match=r"optim_states\.pt' is not a plain-tensor checkpoint"):
        getattr(rqscale.engine, convert)(str(tmp_path / "ckpt"), "engine")
    assert not marker.exists()


def test_genuine_checkpoint_resumes(two_step_run, tmp_path):
    """The happy path through the same checks: DeepSpeed's real files and rank_0.pt pass them."""
    resume(two_step_run, tmp_path, lambda directory: None)
    assert (tmp_path / "copy" / "checkpoint_00000003").is_dir()
