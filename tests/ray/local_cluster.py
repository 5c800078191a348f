"""A real Ray cluster on this machine, started with `ray start --head` the way a user starts one.

It runs in a private temp dir on free ports, and `ray start` is launched as the leader of a new
session: every process it forks (GCS, raylet, dashboard, the autoscaler and the fake nodes it
launches, their workers) inherits that session id. Teardown signals exactly that session, never
`ray stop`, which would also stop Ray processes this test did not start.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

BIN = os.path.dirname(sys.executable)
RAY = os.path.join(BIN, "ray")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLUSTER_README = os.path.join(REPO, "cluster", "README.md")
LOCAL_SECTION = "## Try the whole path on one machine"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readme_submit_command(config_prefix: str = "configs/debug/") -> list:
    """The `ray job submit -- python -m rqscale.train configs/debug/...` line of cluster/README.md's
    one-machine section, split into argv (run verbatim, no shell)."""
    text = open(CLUSTER_README).read()
    section = text.split(LOCAL_SECTION, 1)[1].split("\n## ", 1)[0]
    prefix = f"ray job submit -- python -m rqscale.train {config_prefix}"
    lines = [ln.strip() for ln in section.splitlines() if ln.strip().startswith(prefix)]
    assert len(lines) == 1, f"expected one '{prefix}...' line in {LOCAL_SECTION}, found {lines}"
    return shlex.split(lines[0])


class LocalCluster:
    """`ray start --head` in `workdir` (jobs run there), with token auth as Ray sets it up."""

    def __init__(self, workdir: str, head_cpus: int, autoscaling_config: dict | None = None, env: dict | None = None):
        self.workdir, self.head_cpus = workdir, head_cpus
        self.temp_dir = tempfile.mkdtemp(prefix="rqray-")  # short: Ray's unix socket paths are length-limited
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.autoscaling_config, self.extra_env = autoscaling_config, env or {}
        self.session_id = None

    @property
    def gcs_address(self) -> str:
        from ray._private.services import get_node_ip_address

        return f"{get_node_ip_address()}:{self.gcs_port}"

    def client_env(self) -> dict:
        """What a user exports before `ray job submit` (cluster/README.md): the job server's address
        and token auth (DESIGN.md: without RAY_AUTH_MODE=token the CLI gets 'Missing authentication
        token'); the venv's bin first so that `ray` and the job's `python` are this install's."""
        env = dict(os.environ, RAY_ADDRESS=f"http://127.0.0.1:{self.dashboard_port}", RAY_AUTH_MODE="token")
        env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
        return env

    def start(self) -> "LocalCluster":
        cmd = [RAY, "start", "--head", f"--port={self.gcs_port}", f"--num-cpus={self.head_cpus}",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
               f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
               f"--temp-dir={self.temp_dir}", "--disable-usage-stats"]
        if self.autoscaling_config is not None:
            cmd.append(f"--autoscaling-config={self._write_autoscaling_config()}")
        env = dict(self.client_env(), **self.extra_env)
        env.pop("RAY_ADDRESS")
        proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.session_id = proc.pid  # the session leader's pid is the session id
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed ({proc.returncode}):\n{out[-3000:]}")
        return self

    def _write_autoscaling_config(self) -> str:
        path = os.path.join(self.temp_dir, "autoscaling.json")
        with open(path, "w") as f:
            json.dump(self.autoscaling_config, f)
        return path

    def ray_cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, *args], env=self.client_env(), cwd=self.workdir, capture_output=True,
                              text=True, timeout=timeout)

    def nodes(self) -> list:
        """`ray list nodes` through the dashboard's state API: one dict per node ever registered."""
        out = self.ray_cli("list", "nodes", "--format", "json", "--limit", "100")
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)

    def stop(self) -> None:
        if self.session_id is not None:
            _signal_session(self.session_id, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _session_pids(self.session_id) and time.monotonic() < deadline:
                time.sleep(0.5)
            _signal_session(self.session_id, signal.SIGKILL)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _session_pids(session_id: int) -> list:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp session ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[3]) == session_id and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def _signal_session(session_id: int, sig: int) -> None:
    for pid in _session_pids(session_id):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def job_id_of(submit_output: str) -> str:
    match = re.search(r"Job '(raysubmit_\w+)'", submit_output)
    assert match, submit_output[-2000:]
    return match.group(1)
