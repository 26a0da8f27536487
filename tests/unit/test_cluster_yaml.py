"""cluster.yaml is a valid Ray cluster-launcher config that installs this project on every node.

`ray up` needs a cloud account, so this checks what can be checked offline: the structure the
launcher requires, the autoscaler's own JSON schema and validation (shipped in the ray wheel),
and that the versions baked into the cluster (Ray image, torch) agree with pyproject.toml.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

CLUSTER_YAML = REPO_ROOT / "cluster.yaml"
NODE_TYPE_KEYS = ("min_workers", "max_workers", "resources", "node_config")
WHEEL_INSTALL = re.compile(r"pip install\b.*\s(?P<dir>\S+)/kb_pipeline-\*\.whl")


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def pins() -> dict[str, str]:
    """Exact `name==version` pins of pyproject.toml's dependencies, by name (extras dropped)."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    found = {}
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==([^;\s]+)", requirement.strip())
        if match:
            found[match[1].lower()] = match[2]
    return found


def _worker_types(cluster: dict) -> dict[str, dict]:
    return {
        name: t for name, t in cluster["available_node_types"].items() if name != cluster["head_node_type"]
    }


def _setup_commands(cluster: dict, node_type: str) -> list[str]:
    """The setup commands the launcher runs on a node of `node_type` (a node type's own
    worker_setup_commands replace the global setup + worker setup commands)."""
    own = cluster["available_node_types"][node_type].get("worker_setup_commands")
    if node_type == cluster["head_node_type"]:
        return cluster.get("setup_commands", []) + cluster.get("head_setup_commands", [])
    if own is not None:
        return own
    return cluster.get("setup_commands", []) + cluster.get("worker_setup_commands", [])


def _images(cluster: dict) -> dict[str, str]:
    """The container image of each node type."""
    docker = cluster.get("docker", {})
    images = {}
    for name, node_type in cluster["available_node_types"].items():
        own = node_type.get("docker", {})
        if name == cluster["head_node_type"]:
            images[name] = docker.get("head_image") or docker["image"]
        else:
            images[name] = own.get("worker_image") or docker.get("worker_image") or docker["image"]
    return images


def test_required_keys_and_node_types(cluster):
    for key in ("cluster_name", "max_workers", "provider", "available_node_types", "head_node_type"):
        assert key in cluster, f"cluster.yaml lacks {key}"
    assert cluster["provider"]["type"]
    assert cluster["head_node_type"] in cluster["available_node_types"]
    for name, node_type in cluster["available_node_types"].items():
        for key in NODE_TYPE_KEYS:
            assert key in node_type, f"node type {name} lacks {key}"
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"], name
        assert all(isinstance(v, int) and v >= 0 for v in node_type["resources"].values()), name
        assert node_type["node_config"], f"node type {name} has an empty node_config"
    total = sum(t["max_workers"] for t in cluster["available_node_types"].values())
    assert total <= cluster["max_workers"], "the node types' max_workers add up to more than max_workers"


def test_cpu_and_gpu_workers_scale_on_demand(cluster):
    workers = _worker_types(cluster)
    gpu = {name: t for name, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    cpu = {name: t for name, t in workers.items() if not t["resources"].get("GPU")}
    assert gpu, "a worker type must declare GPU resources (the embed actors ask for them)"
    assert cpu, "a CPU-only worker type runs crawl, clean, chunk and write"
    assert all(t["max_workers"] > t["min_workers"] for t in workers.values()), "every worker type autoscales"
    assert all(t["min_workers"] == 0 for t in gpu.values()), "no idle GPU is paid for"
    assert any(t["min_workers"] >= 1 for t in cpu.values()), (
        "a CPU worker is always up (the head runs no tasks)"
    )
    assert cluster["available_node_types"][cluster["head_node_type"]]["resources"].get("CPU") == 0
    assert cluster["idle_timeout_minutes"] > 0


def test_every_node_installs_the_project_from_the_mounted_wheel(cluster):
    mounted = {
        remote
        for remote, local in cluster["file_mounts"].items()
        if local.rstrip("/").endswith("build/cluster")
    }
    assert mounted, "the wheel folder (build/cluster, see the header of cluster.yaml) is synced to the nodes"
    for name in cluster["available_node_types"]:
        commands = " && ".join(_setup_commands(cluster, name))
        installs = [m["dir"] for m in WHEEL_INSTALL.finditer(commands)]
        assert installs and set(installs) <= mounted, f"{name} does not install the project's wheel"
    assert any("boto3" in c for c in cluster["head_setup_commands"]), (
        "the AWS autoscaler needs boto3 on the head"
    )


def test_torch_and_ray_versions_match_pyproject(cluster, pins):
    torch_pin = pins["torch"]
    for name, node_type in cluster["available_node_types"].items():
        commands = _setup_commands(cluster, name)
        torch_installs = [c for c in commands if re.search(r"\btorch==", c)]
        assert torch_installs, f"{name} must install torch before the project (which pins it)"
        first_project_install = next(i for i, c in enumerate(commands) if WHEEL_INSTALL.search(c))
        assert commands.index(torch_installs[0]) < first_project_install, name
        for command in torch_installs:
            assert re.search(rf"\btorch=={re.escape(torch_pin)}\b", command), (
                f"{name}: torch must be {torch_pin}"
            )
        cpu_wheel = any("download.pytorch.org/whl/cpu" in c for c in torch_installs)
        assert cpu_wheel == (node_type["resources"].get("GPU", 0) == 0), f"{name}: CPU torch iff no GPU"
    for name, image in _images(cluster).items():
        assert image.startswith("rayproject/ray:"), name
        tag = image.split(":", 1)[1]
        assert tag.startswith(pins["ray"] + "-"), f"{name}: image {image} is not Ray {pins['ray']}"
        assert "-py311" in tag, f"{name}: the project supports Python 3.11"
        gpu = cluster["available_node_types"][name]["resources"].get("GPU", 0) > 0
        assert tag.endswith("-gpu") == gpu, f"{name}: GPU image iff GPU node"


def _ray_schema() -> dict:
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    if not path.exists():
        pytest.skip("this ray wheel ships no autoscaler schema")
    return json.loads(path.read_text())


def test_matches_the_autoscalers_json_schema(cluster):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(cluster, _ray_schema())


def test_ray_up_accepts_it(cluster):
    """What `ray up` runs before it touches the cloud: defaults for the provider, merged setup
    commands, Docker checks, then the same validation the autoscaler applies."""
    pytest.importorskip("jsonschema")
    util = pytest.importorskip("ray.autoscaler._private.util")
    prepared = util.prepare_config(cluster)
    util.validate_config(prepared)
    assert prepared["available_node_types"].keys() == cluster["available_node_types"].keys()
