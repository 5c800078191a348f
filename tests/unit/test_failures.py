"""How failures are stopped and reported (rqscale/launch/failures.py), the CLI's one-line failure message,
and the fault-injection step hook (rqscale/bench/faults.py). No Ray cluster: the Ray Train end-to-end
checks are tests/ray/test_ray_training.py (deterministic error, killed worker)."""
import json
import pickle
import subprocess
import sys
import threading

import pytest

from rqscale.bench.faults import KillAtStep, parse_kill_at
from rqscale.launch.failures import FatalChannel, FatalRunError, one_line, root_cause, write_traceback
from tests.conftest import DEBUG_STAGE1, REPO


@pytest.fixture
def ray_train_v2(monkeypatch):
    """ray.train's exception classes as `launch` gets them: importing ray.train picks V1 or V2 from this variable."""
    monkeypatch.setenv("RAY_TRAIN_V2_ENABLED", "1")
    from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

    return ControllerError, WorkerGroupError


def test_channel_keeps_the_first_report_and_wakes_the_waiter():
    channel = FatalChannel()  # the actor's class, called directly
    woken = []
    waiter = threading.Thread(target=lambda: woken.append(channel.wait()))
    waiter.start()
    channel.report("ConfigError: first")
    channel.report("ConfigError: second rank, same error")
    waiter.join(timeout=10)
    assert woken == ["ConfigError: first"] and channel.error() == "ConfigError: first"


def test_channel_wakes_the_waiter_with_nothing_when_fit_ends():
    channel = FatalChannel()
    channel.finish()
    assert channel.wait() is None and channel.error() is None


def test_root_cause_unwraps_ray_train_errors(ray_train_v2):
    ControllerError, WorkerGroupError = ray_train_v2
    worker = ValueError("bad value on rank 1")
    group = WorkerGroupError("Training failed: rank 1 ...", {1: worker, 3: RuntimeError("collateral")})
    assert root_cause(group) is worker
    fatal = FatalRunError("ConfigError: labels")
    assert root_cause(ControllerError(fatal)) is fatal
    plain = OSError("disk full")
    assert root_cause(plain) is plain


def test_stop_on_fatal_raises_only_for_fatal_errors_and_pickles(ray_train_v2):
    """Ray Train runs the callback in its controller: it must survive cloudpickle, and it must leave
    ordinary worker errors (retried under train.max_failures) alone."""
    import ray.cloudpickle

    from rqscale.launch.failures import stop_on_fatal

    callback = ray.cloudpickle.loads(ray.cloudpickle.dumps(stop_on_fatal()))
    callback.after_exception(run_context=None, worker_exceptions={0: RuntimeError("transient")})
    with pytest.raises(FatalRunError, match="labels"):
        callback.after_exception(run_context=None, worker_exceptions={0: RuntimeError("x"), 1: FatalRunError("labels")})


def test_fatal_run_error_pickles_with_its_message():
    """It crosses from the worker to Ray Train's controller; ConfigError itself would not unpickle."""
    assert str(pickle.loads(pickle.dumps(FatalRunError("ConfigError: config key 'x'")))) == "ConfigError: config key 'x'"


def test_one_line_keeps_type_and_first_line():
    assert one_line(KeyError("jpg")) == "KeyError: 'jpg'"
    assert one_line(RuntimeError("conversion failed:\n  stderr line 1\n  line 2")) == "RuntimeError: conversion failed: ..."
    assert one_line(RuntimeError()) == "RuntimeError: (no message)"


def test_write_traceback_appends_each_failure(tmp_path):
    for attempt in range(2):
        try:
            raise ValueError(f"attempt {attempt}")
        except ValueError as exc:
            path = write_traceback(str(tmp_path / "logs"), "error_rank1.log", exc)
    text = open(path).read()
    assert path == str(tmp_path / "logs" / "error_rank1.log")
    assert "ValueError: attempt 0" in text and "ValueError: attempt 1" in text and text.count("Traceback") == 2


def test_cli_prints_the_root_cause_on_one_line_and_writes_the_traceback(tmp_path, monkeypatch, capsys, ray_train_v2):
    """What `python -m rqscale.train` prints when Ray gives up after train.max_failures restarts."""
    from rqscale.train.__main__ import main

    _, WorkerGroupError = ray_train_v2

    def failing_launch(cfg, log=print, step_hook=None):
        raise WorkerGroupError("Training failed due to worker errors:\n<tracebacks>", {0: MemoryError("out of host memory")})

    monkeypatch.setattr("rqscale.launch.trainer.launch", failing_launch)
    assert main([DEBUG_STAGE1, f"run.output_dir={tmp_path}", "run.name=failing"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    log = tmp_path / "failing" / "error.log"
    assert lines == [f"rqscale: training failed: MemoryError: out of host memory [full traceback: {log}]"]
    assert "WorkerGroupError" in log.read_text() and "<tracebacks>" in log.read_text()


def test_kill_at_step_pickles_by_reference():
    """Ray ships the hook to its workers; they import it from the installed package."""
    hook = KillAtStep(3, 1)
    assert b"rqscale.bench.faults" in pickle.dumps(hook) and pickle.loads(pickle.dumps(hook)) == hook
    assert parse_kill_at("3:1") == hook
    with pytest.raises(Exception, match="STEP:RANK"):
        parse_kill_at("three")


def test_kill_at_step_kills_only_its_rank_and_step_in_a_fresh_attempt(tmp_path):
    code = (f"from rqscale.bench.faults import KillAtStep\n"
            f"hook, d = KillAtStep(3, 1), {str(tmp_path)!r}\n"
            "hook(step=3, rank=1, fresh=False, log_dir=d)\n"  # a resumed attempt: never killed
            "hook(step=3, rank=0, fresh=True, log_dir=d)\n"
            "hook(step=2, rank=1, fresh=True, log_dir=d)\n"
            "print('alive', flush=True)\n"
            "hook(step=3, rank=1, fresh=True, log_dir=d)\n"
            "print('not reached')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == -9 and done.stdout == "alive\n", done.stderr
    faults = [json.loads(line) for line in open(tmp_path / "faults.jsonl")]
    assert [(f["event"], f["step"], f["rank"]) for f in faults] == [("sigkill", 3, 1)] and faults[0]["time"] > 0
