"""The cluster definitions in cluster/: Ray's own validator accepts aws.yaml (and rejects broken
copies of it), the KubeRay manifests carry the fields the operator requires, no file holds a
credential or exposes the dashboard, and cluster/README.md gives the commands users need.

Offline: nothing here contacts AWS or Kubernetes, or starts Ray.
"""
import copy
import glob
import os
import re
from functools import partial

import jsonschema
import pytest
import yaml

from tests.conftest import REPO

CLUSTER = os.path.join(REPO, "cluster")
AWS = os.path.join(CLUSTER, "aws.yaml")
RAYCLUSTER = os.path.join(CLUSTER, "kuberay", "raycluster.yaml")
RAYJOB = os.path.join(CLUSTER, "kuberay", "rayjob.yaml")
README = os.path.join(CLUSTER, "README.md")
ENTRYPOINT = "python -m rqscale.train configs/rq_3.8b.yaml"


def _aws() -> dict:
    with open(AWS) as f:
        return yaml.safe_load(f)


def _docs(path: str) -> list:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _kind(path: str, kind: str) -> dict:
    (doc,) = [d for d in _docs(path) if d.get("kind") == kind]
    return doc


def _workers(cfg: dict) -> dict:
    return {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}


def _cluster_files() -> list:
    files = sorted(glob.glob(os.path.join(CLUSTER, "**", "*"), recursive=True))
    return [f for f in files if os.path.isfile(f)]


# ---- aws.yaml through Ray's own validation --------------------------------------------------------

def test_aws_yaml_passes_rays_validation_before_and_after_defaults():
    """The checks `ray up` makes before it calls AWS: the schema on the file, then prepare_config
    (defaults.yaml merged, setup commands merged, per-type worker limits) and the schema again."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(_aws())
    prepared = prepare_config(_aws())
    validate_config(prepared)
    # Our own commands survive the defaults merge: Ray's defaults.yaml would start the head with
    # --dashboard-host=0.0.0.0 and install a nightly Ray wheel.
    assert prepared["head_start_ray_commands"] == _aws()["head_start_ray_commands"]
    assert prepared["setup_commands"] == _aws()["setup_commands"]
    assert not any("ray-wheels" in c for c in prepared["head_setup_commands"] + prepared["worker_setup_commands"])
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


def _broken(mutate) -> dict:
    cfg = copy.deepcopy(_aws())
    mutate(cfg)
    return cfg


@pytest.mark.parametrize("mutate, error", [
    (lambda c: c.update(dashboard_host="127.0.0.1"), jsonschema.ValidationError),          # unknown top-level key
    (lambda c: c["available_node_types"]["gpu_a100_80gb"].update(gpus=8), jsonschema.ValidationError),  # unknown node-type key
    (lambda c: c["available_node_types"]["gpu_a100_80gb"]["resources"].update(GPU=-8), jsonschema.ValidationError),
    (lambda c: c.pop("cluster_name"), jsonschema.ValidationError),
    (lambda c: c.update(head_node_type="no_such_type"), ValueError),
    (lambda c: c["available_node_types"]["gpu_a100_80gb"].update(min_workers=c["max_workers"] + 1), ValueError),
], ids=["top-level-key", "node-type-key", "negative-gpus", "no-cluster-name", "unknown-head", "min-over-global-max"])
def test_the_same_validator_rejects_broken_copies(mutate, error):
    """Proof that the validator above really inspects this file: small breakages are refused."""
    from ray.autoscaler._private.util import validate_config

    with pytest.raises(error):
        validate_config(_broken(mutate))


def test_autoscaler_places_a_16_gpu_run_on_two_a100_nodes_and_nothing_on_the_head():
    """Ray's own bin-packing (the v1 autoscaler's get_nodes_for) on the prepared config: Ray Train's 16
    GPU workers of configs/rq_3.8b.yaml need exactly 2 eight-GPU nodes, and the head (CPU: 0) never
    takes a worker, not even a CPU-only one."""
    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for
    from ray.autoscaler._private.util import prepare_config

    cfg = prepare_config(_aws())
    scorer = partial(_default_utilization_scorer, node_availability_summary=NodeAvailabilitySummary({}))
    plan = partial(get_nodes_for, cfg["available_node_types"], {}, cfg["head_node_type"], cfg["max_workers"])
    nodes, left = plan([{"CPU": 1, "GPU": 1}] * 16, scorer)
    assert left == [] and sum(nodes.values()) == 2 and cfg["head_node_type"] not in nodes
    nodes, left = plan([{"CPU": 1}], scorer)
    assert cfg["head_node_type"] not in nodes
    nodes, left = plan([{"CPU": 1, "GPU": 1}] * 80, scorer)  # beyond 64 GPUs: capped at max_workers
    assert sum(nodes.values()) == cfg["max_workers"] == 8 and len(left) == 16


# ---- aws.yaml: what the brief demands of it -------------------------------------------------------

def test_head_runs_no_training_and_serves_the_dashboard_on_loopback_only():
    cfg = _aws()
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"]["CPU"] == 0 and head["resources"].get("GPU", 0) == 0
    assert not head["node_config"]["InstanceType"].startswith(("p", "g"))  # a CPU instance
    start = " ".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in start and "--dashboard-host=127.0.0.1" in start
    assert "RAY_AUTH_MODE=token" in start and "RAY_AUTH_MODE=token" in " ".join(cfg["worker_start_ray_commands"])


def test_worker_types_are_8xa100_nodes_that_scale_from_zero():
    cfg = _aws()
    workers = _workers(cfg)
    assert {w["node_config"]["InstanceType"] for w in workers.values()} == {"p4d.24xlarge", "p4de.24xlarge"}
    for name, w in workers.items():
        assert w["min_workers"] == 0 and w["resources"]["GPU"] == 8 and w["resources"]["CPU"] == 96, name
        assert w["resources"]["accelerator_type:A100"] == 1, name
    on_demand = [w for w in workers.values() if "InstanceMarketOptions" not in w["node_config"]]
    assert {w["node_config"]["InstanceType"] for w in on_demand} == {"p4d.24xlarge", "p4de.24xlarge"}
    assert all(w["max_workers"] == 8 for w in on_demand)
    spot = [w for w in workers.values() if w["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"]
    assert spot, "a spot node type"


def test_efa_placement_and_network_interfaces_as_ray_requires():
    """p4d/p4de: 4 EFA cards; Ray refuses subnets or security groups at node level next to
    NetworkInterfaces, and needs both inside every interface (aws/config.py)."""
    for name, w in _workers(_aws()).items():
        nc = w["node_config"]
        nics = nc["NetworkInterfaces"]
        assert sorted(n["NetworkCardIndex"] for n in nics) == [0, 1, 2, 3], name
        assert all(n["InterfaceType"] in ("efa", "efa-only") for n in nics), name
        assert [n["InterfaceType"] for n in nics if n["NetworkCardIndex"] == 0] == ["efa"], name  # primary carries IP
        assert all(n["SubnetId"] and n["Groups"] for n in nics), name
        assert not {"SubnetId", "SubnetIds", "SecurityGroupIds"} & set(nc), name
        assert nc["Placement"]["GroupName"], name
    env = " ".join(_aws()["worker_start_ray_commands"])
    assert "FI_PROVIDER=efa" in env and "FI_EFA_USE_DEVICE_RDMA=1" in env


def test_instance_profiles_on_every_node_and_provider_settings():
    cfg = _aws()
    for name, t in cfg["available_node_types"].items():
        assert t["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name
    head_arn = cfg["available_node_types"][cfg["head_node_type"]]["node_config"]["IamInstanceProfile"]["Arn"]
    assert all(w["node_config"]["IamInstanceProfile"]["Arn"] != head_arn for w in _workers(cfg).values())
    p = cfg["provider"]
    assert (p["type"], p["region"], p["cache_stopped_nodes"]) == ("aws", "us-east-1", False)
    assert p["availability_zone"].startswith("us-east-1") and "," not in p["availability_zone"]  # one AZ
    assert cfg["idle_timeout_minutes"] > 0 and cfg["upscaling_speed"] > 0
    # A pre-made security group on the head (Ray's own would open SSH to the world).
    assert cfg["available_node_types"][cfg["head_node_type"]]["node_config"]["SecurityGroupIds"]


def test_nodes_install_the_pinned_rqscale_and_ray_named_in_metadata():
    cfg = _aws()
    version, ray_version = cfg["metadata"]["rqscale_version"], cfg["metadata"]["ray_version"]
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        assert f'version = "{version}"' in f.read()
    installs = [c for c in cfg["setup_commands"] if "pip install" in c]
    assert installs and all(f"/tmp/rqscale-{version}-py3-none-any.whl" in c for c in installs)
    assert all(f'"ray[default,train]=={ray_version}"' in c for c in installs)
    assert any(f"s3://<your-bucket>/rqscale/{version}/rqscale-{version}-py3-none-any.whl" in c for c in cfg["setup_commands"])
    # An empty ImageId or "latest_dlami" would let Ray substitute whatever AMI is current.
    for name, t in cfg["available_node_types"].items():
        assert t["node_config"]["ImageId"] not in ("", "latest_dlami"), name
    # The job's working directory holds configs/: synced on the head, and `ray start --head` runs there.
    assert f"rqscale/{version}/configs ~/rqscale/configs" in " ".join(cfg["head_setup_commands"])
    assert "cd ~/rqscale && ray start --head" in " ".join(cfg["head_start_ray_commands"])


# ---- KubeRay manifests ----------------------------------------------------------------------------

def _check_cluster_spec(spec: dict, where: str) -> None:
    """The fields the KubeRay operator requires or that rqscale depends on (raycluster_types.go)."""
    assert spec["enableInTreeAutoscaling"] is True, where
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0, where
    assert spec["autoscalerOptions"]["upscalingMode"] in ("Default", "Aggressive", "Conservative"), where
    assert spec["authOptions"]["mode"] == "token", where
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict) and head["rayStartParams"].get("num-cpus") == "0", where
    assert head["template"]["spec"]["containers"][0]["image"], where
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress"), where
    assert head["rayStartParams"].get("dashboard-host") in (None, "127.0.0.1", "localhost"), where
    groups = spec["workerGroupSpecs"]
    assert groups, where
    for g in groups:
        assert g["groupName"] and isinstance(g["rayStartParams"], dict), where
        assert 0 == g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"], where
        pod = g["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] and container["resources"]["limits"]["nvidia.com/gpu"] == 8, where
        assert pod["tolerations"] and pod["nodeSelector"], where
        shm = [v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
        assert shm and {"name": shm[0]["name"], "mountPath": "/dev/shm"} in container["volumeMounts"], where
        assert pod["serviceAccountName"] == head["template"]["spec"]["serviceAccountName"], where


def test_kuberay_manifests_parse_and_carry_the_required_fields():
    for path, kind in ((RAYCLUSTER, "RayCluster"), (RAYJOB, "RayJob")):
        doc = _kind(path, kind)
        assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"], path
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), path  # DNS-1035, KubeRay checks it
        spec = doc["spec"] if kind == "RayCluster" else doc["spec"]["rayClusterSpec"]
        _check_cluster_spec(spec, path)
        assert spec["rayVersion"] == _aws()["metadata"]["ray_version"], path
        (sa,) = [d for d in _docs(path) if d["kind"] == "ServiceAccount"]
        assert sa["metadata"]["name"] == "rqscale" and "eks.amazonaws.com/role-arn" in sa["metadata"]["annotations"]


def test_rayjob_runs_the_training_entrypoint_with_retries_and_gcs_fault_tolerance():
    spec = _kind(RAYJOB, "RayJob")["spec"]
    assert spec["entrypoint"] == ENTRYPOINT
    assert spec["backoffLimit"] >= 1 and spec["activeDeadlineSeconds"] > 0
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode")
    ft = spec["rayClusterSpec"]["gcsFaultToleranceOptions"]
    assert ft["redisAddress"] and "value" not in ft["redisPassword"]  # the password comes from a Secret
    assert ft["redisPassword"]["valueFrom"]["secretKeyRef"]["name"]
    # KubeRay refuses the old annotation / env style next to gcsFaultToleranceOptions (validation.go).
    assert "ray.io/ft-enabled" not in _kind(RAYJOB, "RayJob")["metadata"].get("annotations", {})
    head_env = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0].get("env", [])
    assert not {"RAY_REDIS_ADDRESS", "REDIS_PASSWORD"} & {e["name"] for e in head_env}


# ---- every cluster file ---------------------------------------------------------------------------

# Key names, access key ids, private keys, and 40-character secret-key-like runs.
CREDENTIAL = re.compile(r"(?i:aws_access_key_id|aws_secret_access_key|aws_session_token)"
                        r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b|-----BEGIN [A-Z ]*PRIVATE KEY-----"
                        r"|(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")


def test_no_credentials_and_no_open_dashboard_in_any_cluster_file():
    files = _cluster_files()
    assert {AWS, RAYCLUSTER, RAYJOB, README} <= set(files)
    for path in files:
        with open(path) as f:
            text = f.read()
        assert not CREDENTIAL.search(text), (path, CREDENTIAL.search(text))
        assert not re.search(r"dashboard[-_]host[\"']?\s*[=:]\s*[\"']?0\.0\.0\.0", text), path
        if path.endswith(".yaml"):  # no public exposure of the head, comments aside
            code = "\n".join(line.split("#")[0] for line in text.splitlines())
            assert "LoadBalancer" not in code and "NodePort" not in code and "0.0.0.0/0" not in code, path


def test_credential_pattern_is_not_blind():
    assert CREDENTIAL.search("aws_secret_access_key = x") and CREDENTIAL.search("AKIA" + "ABCDEFGHIJKLMNOP")
    assert CREDENTIAL.search("secret: " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY")  # AWS's documented example
    assert re.search(r"dashboard[-_]host[\"']?\s*[=:]\s*[\"']?0\.0\.0\.0", "--dashboard-host=0.0.0.0")
    assert re.search(r"dashboard[-_]host[\"']?\s*[=:]\s*[\"']?0\.0\.0\.0", 'dashboard-host: "0.0.0.0"')


# ---- cluster/README.md ----------------------------------------------------------------------------

def test_readme_gives_the_commands_users_need():
    with open(README) as f:
        text = f.read()
    for command in ("ray up cluster/aws.yaml", "ray job submit -- " + ENTRYPOINT, "ray job logs --follow",
                    "ray job status", "ray job stop", "ray down cluster/aws.yaml", "ray dashboard cluster/aws.yaml",
                    "ssh -i", "-L 8265:localhost:8265", "RAY_ADDRESS=http://127.0.0.1:8265", "RAY_AUTH_MODE=token",
                    "kubectl apply -f cluster/kuberay/raycluster.yaml", "kubectl apply -f cluster/kuberay/rayjob.yaml",
                    "kubectl port-forward", "kubectl delete -f cluster/kuberay/raycluster.yaml",
                    "python -m rqscale.plan configs/rq_3.8b.yaml --nodes N --gpus-per-node 8 --gpu a100-80gb",
                    "p4d.24xlarge", "p4de.24xlarge", "train.max_failures", "run.output_dir"):
        assert command in text, command
    # The one-machine section's submit line is what tests/ray/test_cluster.py runs verbatim.
    assert re.search(r"^## Try the whole path on one machine\n(.|\n)*?^ray job submit -- python -m rqscale.train "
                     r"configs/debug/", text, re.MULTILINE)
    assert re.search(r"[Cc]heck\s+current\s+pricing", text)
