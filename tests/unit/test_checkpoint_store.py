"""Checkpoint visibility in storage: only checkpoints whose marker and every listed file are present
count; the newest complete one is chosen; retention keeps K complete checkpoints."""
import os

from rqscale.train import checkpoint as ckpt


def _write_checkpoint(run, step, files=("engine/zero_pp_rank_0.pt", "engine/zero_pp_rank_1.pt", "rank_0.pt"), complete=True):
    base = os.path.join(run, ckpt.checkpoint_name(step))
    for name in files:
        os.makedirs(os.path.dirname(os.path.join(base, name)), exist_ok=True)
        with open(os.path.join(base, name), "wb") as f:
            f.write(os.urandom(64 + step))
    if complete:
        ckpt.mark_complete(run, step, world_size=2)
    return base


def test_newest_complete_checkpoint_wins_over_incomplete_ones(tmp_path):
    run = str(tmp_path / "run")
    _write_checkpoint(run, 10)
    damaged = _write_checkpoint(run, 20)
    _write_checkpoint(run, 30, complete=False)  # upload interrupted before the marker
    os.remove(os.path.join(damaged, "engine", "zero_pp_rank_1.pt"))  # a shard lost after the marker
    url, marker = ckpt.latest_complete(run)
    assert url.endswith("checkpoint_00000010") and marker["step"] == 10 and marker["world_size"] == 2
    assert sorted(marker["files"]) == ["engine/zero_pp_rank_0.pt", "engine/zero_pp_rank_1.pt", "rank_0.pt"]


def test_truncated_file_makes_a_checkpoint_incomplete(tmp_path):
    run = str(tmp_path / "run")
    base = _write_checkpoint(run, 5)
    with open(os.path.join(base, "rank_0.pt"), "wb") as f:
        f.write(b"short")
    assert ckpt.is_complete(base) is None and ckpt.latest_complete(run) is None


def test_prune_keeps_the_newest_complete_checkpoints(tmp_path):
    run = str(tmp_path / "run")
    for step in (2, 4, 6, 8):
        _write_checkpoint(run, step)
    _write_checkpoint(run, 3, complete=False)
    ckpt.prune(run, keep=2)
    assert ckpt.checkpoint_steps(run) == [8, 6]


def test_download_skips_other_ranks_files(tmp_path):
    run = str(tmp_path / "run")
    url = _write_checkpoint(run, 1)
    local = tmp_path / "local"
    ckpt.download(url, str(local), skip=lambda name: "rank_1" in name)
    assert (local / "engine" / "zero_pp_rank_0.pt").exists() and not (local / "engine" / "zero_pp_rank_1.pt").exists()
