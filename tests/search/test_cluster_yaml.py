"""ray_cluster.yaml passes Ray's own autoscaler config validation and has what the README promises."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "ray_cluster.yaml"


@pytest.fixture
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_ray_validates_the_cluster_config(config):
    """What `ray up` does before launching anything: fill in the provider defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["available_node_types"]["gpu_worker"]["resources"]["GPU"] == 1


def test_ray_rejects_a_broken_copy(config):
    """The validator really looks at the file: a non-integer GPU count is refused."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["resources"]["GPU"] = "one"
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_config(prepare_config(broken))


def test_gpu_workers_head_mlflow_server_and_auth(config):
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert any(t["resources"].get("GPU", 0) >= 1 and t.get("max_workers", 0) >= 1 for t in types.values())
    setup = " ".join(config["setup_commands"])
    assert "pip install" in setup and "squeezetune" in setup
    head = " ".join(config["head_start_ray_commands"])
    assert "mlflow server" in head and "--port 5000" in head
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert any("RAY_AUTH_MODE=token ray start" in c for c in commands)
    assert "~/.ray/auth_token" in config["file_mounts"]
