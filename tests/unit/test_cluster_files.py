"""The launch files in cluster/: checked offline, the way their tools would check them.

- `ray up` configs (aws-gpu.yaml, gcp-gpu.yaml): Ray's own steps before it touches a
  cloud, `prepare_config` (defaults fill-out, setup-command merge, docker checks) then
  `validate_config` (ray-schema.json plus cross-field rules). Negative cases prove
  that this validation rejects broken configs rather than passing anything.
- runtime_env.yaml: known runtime_env fields only, Ray's own type checks, and Ray's own
  directory walk showing what `--working-dir .` would upload with these excludes.
- kuberay-rayjob.yaml: the RayJob fields KubeRay needs, and an entrypoint whose
  score-ray config loads and whose GPU/CPU demand fits the worker groups.

Nothing here talks to a cloud, a Kubernetes API or a Ray cluster.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from score_ray.cluster_spec import MACHINES, read_cluster
from score_ray.config import Config, load_config
from score_ray.placement import check_fits, layout

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
RAY_UP_CONFIGS = ("aws-gpu.yaml", "gcp-gpu.yaml")

# The configs spell their `resources` out (auto-detection needs cloud API access), so
# cluster_spec.MACHINES (providers' published specs; `score-ray plan` reads GPU memory from
# it) catches an instance type changed without its resources.
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def load_yaml(name: str) -> Any:
    return yaml.safe_load((CLUSTER / name).read_text())


def ray_up_validate(config: dict) -> dict:
    """What `ray up` does to a config before any cloud call; raises on a bad config."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def machine_type(node_config: dict) -> str:
    return node_config.get("InstanceType") or node_config["machineType"]


def head_and_workers(config: dict) -> tuple[dict, dict[str, dict]]:
    types = config["available_node_types"]
    head = config["head_node_type"]
    return types[head], {name: t for name, t in types.items() if name != head}


# ---------------------------------------------------------------- ray up configs


@pytest.mark.parametrize("name", RAY_UP_CONFIGS)
def test_ray_up_config_passes_rays_validation(name):
    prepared = ray_up_validate(load_yaml(name))
    # The fill-out really ran: fields the file leaves out now have Ray's defaults.
    assert (
        prepared["head_setup_commands"][: len(prepared["setup_commands"])]
        == (prepared["setup_commands"])
    )
    assert "cluster_synced_files" in prepared


def _unknown_top_level_key(cfg: dict) -> None:
    cfg["max_worker"] = 5  # typo of max_workers


def _node_type_without_resources(cfg: dict) -> None:
    del cfg["available_node_types"][cfg["head_node_type"]]["resources"]


def _head_type_not_defined(cfg: dict) -> None:
    cfg["head_node_type"] = "no-such-type"


def _min_workers_over_global_max(cfg: dict) -> None:
    _, workers = head_and_workers(cfg)
    next(iter(workers.values()))["min_workers"] = cfg["max_workers"] + 1


def _max_workers_not_a_number(cfg: dict) -> None:
    cfg["max_workers"] = "five"


def _unknown_docker_key(cfg: dict) -> None:
    cfg["docker"]["pull_befor_run"] = True  # typo of pull_before_run


BROKEN = {
    "unknown-top-level-key": (_unknown_top_level_key, jsonschema.ValidationError),
    "node-type-without-resources": (_node_type_without_resources, jsonschema.ValidationError),
    "head-type-not-defined": (_head_type_not_defined, ValueError),
    "min-workers-over-global-max": (_min_workers_over_global_max, ValueError),
    "max-workers-not-a-number": (_max_workers_not_a_number, jsonschema.ValidationError),
    "unknown-docker-key": (_unknown_docker_key, jsonschema.ValidationError),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN))
@pytest.mark.parametrize("name", RAY_UP_CONFIGS)
def test_ray_up_validation_rejects_broken_config(name: str, breakage: str):
    breaker, error = BROKEN[breakage]
    config = load_yaml(name)
    breaker(config)
    with pytest.raises(error):
        ray_up_validate(config)


@pytest.mark.parametrize("name", RAY_UP_CONFIGS)
def test_ray_up_cpu_head_gpu_workers_with_matching_resources(name):
    config = load_yaml(name)
    head, workers = head_and_workers(config)
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    assert any(t["resources"].get("GPU", 0) >= 1 for t in workers.values())
    for node_type in [head, *workers.values()]:
        kind = machine_type(node_type["node_config"])
        machine = MACHINES[kind]
        assert node_type["resources"] == {"CPU": machine.cpus, "GPU": machine.gpus}, kind
    assert sum(t.get("max_workers", 0) for t in workers.values()) <= config["max_workers"]
    if config["provider"]["type"] == "gcp":
        for node_type in workers.values():  # GPU VMs cannot live-migrate
            assert {"onHostMaintenance": "TERMINATE"} in node_type["node_config"]["scheduling"]


@pytest.mark.parametrize("name", RAY_UP_CONFIGS)
def test_ray_up_image_matches_local_ray_and_installs_score_ray(name):
    config = load_yaml(name)
    # `ray up` and `ray job submit` expect the cluster's Ray to equal the client's.
    image = rf"rayproject/ray(-ml)?:{re.escape(ray.__version__)}-py3\d+-gpu"
    assert re.fullmatch(image, config["docker"]["image"]), config["docker"]["image"]
    (remote, local), *_ = config["file_mounts"].items()
    assert local == "."
    assert {".venv", "runs", ".git"} <= set(config["rsync_exclude"])
    setup = config["setup_commands"]
    install = [
        c for c in setup if "pip install" in c and f"{remote.replace('~', '$HOME')}[gpu]" in c
    ]
    assert install and " -e " in install[0], setup
    # DeepSpeed builds against the torch vLLM brought in: both before score-ray itself.
    index = {key: next(i for i, c in enumerate(setup) if key in c) for key in ("vllm", "deepspeed")}
    assert index["vllm"] < index["deepspeed"] < setup.index(install[0])
    for command in config["head_start_ray_commands"]:
        assert "0.0.0.0" not in command, "keep the job API off the public interface"


# ---------------------------------------------------------------- runtime_env.yaml


def test_runtime_env_uses_only_known_fields_and_passes_rays_checks():
    from ray.runtime_env import RuntimeEnv

    env = load_yaml("runtime_env.yaml")
    assert set(env) <= set(RuntimeEnv.known_fields), set(env) - set(RuntimeEnv.known_fields)
    RuntimeEnv(**env)  # Ray's own type checks (env_vars str -> str, excludes a list, ...)
    assert "working_dir" not in env, "working_dir comes from `--working-dir` on the command line"
    assert not {"pip", "uv", "conda"} & set(env), "dependencies come from the cluster image"
    assert env["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"


def test_runtime_env_excludes_keep_the_upload_small():
    """Walk the repository as Ray's packager does for `--working-dir .` (without .gitignore)."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    excludes = load_yaml("runtime_env.yaml")["excludes"]
    uploaded: list[Path] = []
    _dir_travel(
        REPO,
        [_get_excludes(REPO, excludes)],
        lambda path: uploaded.append(path) if path.is_file() else None,
        include_gitignore=False,
    )
    names = {path.relative_to(REPO).as_posix() for path in uploaded}
    assert {"score_ray/cli.py", "conf/default.yaml", "conf/tiny.yaml"} <= names
    heavy = {".venv", ".git", "runs", "__pycache__"}
    assert not [n for n in names if heavy & set(n.split("/"))]
    assert sum(path.stat().st_size for path in uploaded) < 50 * 2**20


# ---------------------------------------------------------------- KubeRay RayJob


def kuberay_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / "kuberay-rayjob.yaml").read_text()) if d]


def rayjob() -> dict:
    jobs = [d for d in kuberay_docs() if d.get("kind") == "RayJob"]
    assert len(jobs) == 1
    return jobs[0]


def pod_containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def entrypoint_config(entrypoint: str) -> Config:
    """The score-ray config the RayJob's entrypoint would run, loaded offline."""
    argv = shlex.split(entrypoint)
    assert argv[:3] == ["score-ray", "train", "--config"], argv
    config_path = REPO / argv[3]
    assert config_path.parent == REPO / "conf" and config_path.is_file(), argv[3]
    return load_config(config_path, argv[4:])


def test_rayjob_has_the_fields_kuberay_needs():
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    assert DNS_1123.match(job["metadata"]["name"])
    spec = job["spec"]
    assert spec["entrypoint"].strip()
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    groups = cluster["workerGroupSpecs"]
    for params in [head["rayStartParams"], *(g["rayStartParams"] for g in groups)]:
        # KubeRay's CRD types rayStartParams as map[string]string.
        assert all(isinstance(v, str) for v in params.values()), params
    images = {pod_containers(g)[0]["image"] for g in [head, *groups]}
    assert len(images) == 1 and all(images), images
    assert groups
    for group in groups:
        assert DNS_1123.match(group["groupName"])
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        resources = pod_containers(group)[0]["resources"]
        requested = resources.get("requests", {}).get("nvidia.com/gpu")
        # Kubernetes takes extended resources from limits; requests, if given, must match.
        assert requested in (None, resources["limits"].get("nvidia.com/gpu"))
    assert any(pod_containers(g)[0]["resources"]["limits"].get("nvidia.com/gpu") for g in groups)


def test_rayjob_runtime_env_matches_cluster_runtime_env():
    runtime_env = yaml.safe_load(rayjob()["spec"]["runtimeEnvYAML"])
    assert runtime_env["working_dir"], "the entrypoint's conf/ path resolves in working_dir"
    assert runtime_env["env_vars"] == load_yaml("runtime_env.yaml")["env_vars"]


def test_rayjob_entrypoint_config_fits_the_worker_groups():
    """The check a run makes against the live cluster (and `score-ray plan --cluster`)."""
    cfg = entrypoint_config(rayjob()["spec"]["entrypoint"])
    assert cfg.rollout.num_gpus > 0 and cfg.learner.num_gpus > 0
    node_types, _ = read_cluster(CLUSTER / "kuberay-rayjob.yaml")
    check_fits(layout(cfg), [node for t in node_types for node in t.nodes()])


def test_rayjob_output_dir_is_on_a_shared_volume_of_every_pod():
    job = rayjob()
    cfg = entrypoint_config(job["spec"]["entrypoint"])
    claims = {
        d["metadata"]["name"]: d for d in kuberay_docs() if d["kind"] == "PersistentVolumeClaim"
    }
    cluster = job["spec"]["rayClusterSpec"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = [m for m in pod["containers"][0]["volumeMounts"] if is_under(cfg.output_dir, m)]
        assert mounts, f"output_dir {cfg.output_dir} is not on a mounted volume"
        claim = volumes[mounts[0]["name"]]["persistentVolumeClaim"]["claimName"]
        assert "ReadWriteMany" in claims[claim]["spec"]["accessModes"]


def is_under(path: str, mount: dict) -> bool:
    return Path(path).is_relative_to(mount["mountPath"])
