"""Importing rqscale (every module) changes nothing about the process: no environment variables, no
DeepSpeed accelerator choice. Process set-up belongs to entry points and first use (rqscale/engine/setup.py)."""
import json
import os
import subprocess
import sys

from tests.conftest import REPO

# Runs in a fresh interpreter with a near-empty environment. Every write to os.environ is recorded with
# the module that made it, so a write by a third-party library rqscale imports (torch's compile cache
# sets TORCHINDUCTOR_CACHE_DIR when torch._dynamo is first imported) is told apart from rqscale's own.
SCRIPT = r"""
import importlib, json, os, pkgutil, sys

writes = []
_set, _del = type(os.environ).__setitem__, type(os.environ).__delitem__

def _writer() -> str:
    frame = sys._getframe(2)
    while frame.f_globals.get("__name__") in ("os", "_collections_abc"):
        frame = frame.f_back
    return frame.f_globals.get("__name__", "?")

def _record_set(self, key, value):
    writes.append((key, _writer()))
    _set(self, key, value)

def _record_del(self, key):
    writes.append((key, _writer()))
    _del(self, key)

type(os.environ).__setitem__, type(os.environ).__delitem__ = _record_set, _record_del
before = dict(os.environ)
modules = []
for package in ("rqscale", "data_prep"):
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        importlib.import_module(info.name)
        modules.append(info.name)
after = dict(os.environ)
changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
print(json.dumps({"modules": modules, "changed": changed, "writes": writes,
                  "deepspeed_imported": "deepspeed" in sys.modules}))
"""


def test_importing_every_module_leaves_the_environment_alone():
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
           "PYTHONPATH": REPO}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "rqscale.engine.engine" in report["modules"] and "rqscale.launch.trainer" in report["modules"]
    ours = [(key, writer) for key, writer in report["writes"] if writer.split(".")[0] in ("rqscale", "data_prep")]
    assert ours == [], f"rqscale writes os.environ at import time: {ours}"
    third_party = {key for key, _ in report["writes"]}
    assert set(report["changed"]) <= third_party, report
    assert "DS_ACCELERATOR" not in report["changed"]
    assert not report["deepspeed_imported"], "importing rqscale must not import deepspeed (it picks its accelerator then)"
