"""The cluster path proven on one machine: `ray start --head` + `ray job submit` as cluster/README.md
writes them, and Ray's autoscaler adding and removing (fake, local) nodes for a training job.

Both clusters are real Ray: GCS, raylets, dashboard/job server, token auth, and for the second the
autoscaler (v2) with Ray's fake multi-node provider, which starts a raylet per "node" on this machine.
"""
import os
import shutil
import subprocess
import time

import pytest

from rqscale.train.checkpoint import is_complete
from tests.ray.local_cluster import REPO, LocalCluster, job_id_of, readme_submit_command

pytestmark = pytest.mark.slow

FAKE_HEAD_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"  # the fake provider's head id
IDLE_TIMEOUT_MINUTES = 0.25


@pytest.fixture
def job_dir(tmp_path):
    """A directory to `ray start` from, holding the configs: jobs run where the head was started."""
    shutil.copytree(os.path.join(REPO, "configs"), tmp_path / "configs")
    return tmp_path


def submit_readme_job(cluster: LocalCluster, timeout: float = 420) -> subprocess.CompletedProcess:
    """cluster/README.md's submit line, verbatim; `ray` resolves through the client env's PATH."""
    argv = readme_submit_command()
    return subprocess.run(argv, env=cluster.client_env(), cwd=cluster.workdir, capture_output=True, text=True,
                          timeout=timeout)


def assert_job_succeeded(cluster: LocalCluster, result: subprocess.CompletedProcess) -> None:
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    job_id = job_id_of(out)
    status = cluster.ray_cli("job", "status", job_id)
    assert f"Job '{job_id}' succeeded" in status.stdout + status.stderr, status.stdout + status.stderr
    checkpoint = os.path.join(cluster.workdir, "runs", "debug-stage1", "checkpoint_00000010")
    assert is_complete(checkpoint), f"no complete checkpoint at {checkpoint}"
    assert os.path.exists(os.path.join(cluster.workdir, "runs", "debug-stage1", "rqvae.pt"))


def test_readme_job_submit_on_a_local_head(job_dir):
    cluster = LocalCluster(str(job_dir), head_cpus=2).start()
    try:
        assert_job_succeeded(cluster, submit_readme_job(cluster))
    finally:
        cluster.stop()
    assert not os.path.exists(cluster.temp_dir)


def fake_autoscaling_config(gcs_address: str) -> dict:
    """Ray's fake multi-node provider behind the `external` provider type: the wheel lacks the
    fake provider's example.yaml that its own type name would load defaults from (DESIGN.md)."""
    return {
        "cluster_name": "rqscale-fake", "max_workers": 2, "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
        "provider": {"type": "external", "module": "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider",
                     "gcs_address": gcs_address, "head_node_id": FAKE_HEAD_ID, "launch_multiple": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "auth": {"ssh_user": "ray"},
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "cpu_worker": {"resources": {"CPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        **{key: [] for key in ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands",
                               "setup_commands", "head_setup_commands", "worker_setup_commands",
                               "head_start_ray_commands", "worker_start_ray_commands")},
        "file_mounts": {}, "file_mounts_sync_continuously": False,
    }


def worker_nodes(cluster: LocalCluster, state: str) -> list:
    return [n for n in cluster.nodes() if not n["is_head_node"] and n["state"] == state]


def test_autoscaler_adds_nodes_for_the_job_and_releases_them(job_dir):
    env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_enable_autoscaler_v2": "1",
           "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_ID, "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_ID}
    cluster = LocalCluster(str(job_dir), head_cpus=0, env=env)
    cluster.autoscaling_config = fake_autoscaling_config(cluster.gcs_address)
    cluster.start()
    try:
        assert worker_nodes(cluster, "ALIVE") == []  # min_workers 0: nothing until a job asks
        assert_job_succeeded(cluster, submit_readme_job(cluster))
        launched = worker_nodes(cluster, "ALIVE") + worker_nodes(cluster, "DEAD")
        assert len(launched) == 2, launched  # one 1-CPU node per training worker, max_workers 2
        assert all(n["resources_total"].get("CPU") == 1 for n in launched)
        deadline = time.monotonic() + IDLE_TIMEOUT_MINUTES * 60 + 90
        while worker_nodes(cluster, "ALIVE") and time.monotonic() < deadline:
            time.sleep(3)
        assert worker_nodes(cluster, "ALIVE") == [], "idle nodes were not released"
        assert len(worker_nodes(cluster, "DEAD")) == 2
    finally:
        cluster.stop()
