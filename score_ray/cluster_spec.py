"""The node types a cluster file declares: what `score-ray plan --cluster` checks against.

Two kinds of file, both in cluster/:

    Ray cluster launcher (`ray up`)   available_node_types: `resources` per node and
                                      `max_workers` per type (the head counts once)
    KubeRay (RayJob or RayCluster)    headGroupSpec and workerGroupSpecs: Ray's resources
                                      from rayStartParams (num-cpus, num-gpus, resources)
                                      or the container's limits, `maxReplicas` when the
                                      autoscaler is on, else `replicas`

A node type's count is the most nodes of that type the cluster can run, so a plan checks
the largest cluster the file allows. GPU memory and RAM are not Ray resources: they come
from MACHINES, a table of the instance types our cluster files use (KubeRay pods name no
GPU model, so their GPU memory stays unknown unless the plan is told).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from score_ray.config import ConfigError


@dataclass(frozen=True)
class Machine:
    """One cloud instance type, from its provider's published specs."""

    cpus: int
    gpus: int
    memory_gib: float
    gpu_model: str | None = None
    gpu_memory_gib: float | None = None


MACHINES = {
    "m5.2xlarge": Machine(8, 0, 32),
    "g5.xlarge": Machine(4, 1, 16, "A10G", 24),
    "g5.12xlarge": Machine(48, 4, 192, "A10G", 24),
    "n2-standard-8": Machine(8, 0, 32),
    "g2-standard-8": Machine(8, 1, 32, "L4", 24),
    "a2-highgpu-4g": Machine(48, 4, 340, "A100", 40),
}


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict[str, float]
    """Ray resources of one node: CPU, GPU and custom ones."""
    count: int
    """The most nodes of this type the cluster can hold at once."""
    machine: str | None = None
    memory_gib: float | None = None
    gpu_model: str | None = None
    gpu_memory_gib: float | None = None
    """Memory of each of the node's GPUs, when known."""

    def nodes(self) -> list[dict[str, float]]:
        """One resource dict per node, as `placement.check_fits` takes them."""
        return [dict(self.resources) for _ in range(self.count)]


class ClusterFileError(ConfigError):
    """A cluster file that declares no usable node types; the message names the file."""


def read_cluster(path: str | Path) -> tuple[list[NodeType], list[str]]:
    """The node types of a `ray up` config or a KubeRay manifest, and notes on how the
    counts were read."""
    path = Path(path)
    if not path.is_file():
        raise ClusterFileError(f"--cluster: file not found: {path}")
    documents = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    for document in documents:
        if "available_node_types" in document:
            return ray_up_node_types(document)
    for document in documents:
        if document.get("kind") in ("RayJob", "RayCluster", "RayService"):
            return kuberay_node_types(document)
    raise ClusterFileError(
        f"--cluster {path}: neither a Ray cluster-launcher config (available_node_types) "
        "nor a KubeRay RayJob / RayCluster / RayService"
    )


def ray_up_node_types(config: dict[str, Any]) -> tuple[list[NodeType], list[str]]:
    head = config.get("head_node_type")
    types = []
    for name, spec in config["available_node_types"].items():
        node_config = spec.get("node_config", {})
        kind = node_config.get("InstanceType") or node_config.get("machineType")
        count = 1 if name == head else int(spec.get("max_workers", 0))
        types.append(_node_type(name, _resources(spec.get("resources", {})), count, kind))
    notes = []
    cap = config.get("max_workers")
    workers = sum(t.count for t in types if t.name != head)
    if cap is not None and workers > cap:
        notes.append(
            f"the node types allow {workers} workers but max_workers caps the cluster at "
            f"{cap}: this plan assumes every type at its own max_workers"
        )
    return types, notes


def kuberay_node_types(resource: dict[str, Any]) -> tuple[list[NodeType], list[str]]:
    spec = resource.get("spec", {})
    cluster = spec.get("rayClusterSpec", spec)
    autoscaling = bool(cluster.get("enableInTreeAutoscaling"))
    types = [_pod_node_type("head", cluster["headGroupSpec"], 1)]
    for group in cluster.get("workerGroupSpecs", []):
        count = group.get("maxReplicas" if autoscaling else "replicas", group.get("replicas", 1))
        types.append(_pod_node_type(group.get("groupName", "workers"), group, int(count)))
    return types, ["KubeRay pods name no GPU model: GPU memory unknown unless given"]


def local_node_type(
    cpus: int, gpus: int, memory_gib: float, gpu_memory_gib: float | None
) -> NodeType:
    """This machine as `score-ray train` would start Ray on it (see launch.local_cpus)."""
    resources = {"CPU": float(cpus)}
    if gpus:
        resources["GPU"] = float(gpus)
    return NodeType("this machine", resources, 1, None, memory_gib, None, gpu_memory_gib)


def with_gpu_memory(types: list[NodeType], gpu_memory_gib: float) -> list[NodeType]:
    """The same node types with every GPU node's GPU memory set (`--gpu-memory-gib`)."""
    return [
        dataclasses.replace(t, gpu_memory_gib=gpu_memory_gib) if t.resources.get("GPU") else t
        for t in types
    ]


# -- helpers -------------------------------------------------------------------------------


def _resources(raw: dict[str, Any]) -> dict[str, float]:
    return {str(name): float(amount) for name, amount in raw.items() if float(amount)}


def _node_type(name: str, resources: dict[str, float], count: int, kind: str | None) -> NodeType:
    machine = MACHINES.get(kind or "")
    if machine is None:
        return NodeType(name, resources, count, kind)
    return NodeType(
        name, resources, count, kind, machine.memory_gib, machine.gpu_model, machine.gpu_memory_gib
    )


def _pod_node_type(name: str, group: dict[str, Any], count: int) -> NodeType:
    params = group.get("rayStartParams", {}) or {}
    container = group["template"]["spec"]["containers"][0]
    limits = container.get("resources", {}).get("limits", {})
    requests = container.get("resources", {}).get("requests", {})
    resources: dict[str, float] = {}
    cpus = params.get("num-cpus") or limits.get("cpu") or requests.get("cpu")
    if cpus is not None:
        # Ray counts whole CPUs; KubeRay rounds a fractional limit up.
        resources["CPU"] = float(math.ceil(_quantity(cpus)))
    gpus = params.get("num-gpus") or limits.get("nvidia.com/gpu")
    if gpus:
        resources["GPU"] = float(gpus)
    if params.get("resources"):
        # rayStartParams are strings: resources is a JSON object, often quoted once more.
        custom = json.loads(str(params["resources"]).strip("'\""))
        resources.update(_resources(custom))
    memory = limits.get("memory") or requests.get("memory")
    memory_gib = _quantity(memory) / 2**30 if memory is not None else None
    return NodeType(name, resources, count, None, memory_gib)


_SUFFIXES = {
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def _quantity(value: Any) -> float:
    """A Kubernetes quantity ("8", "500m", "48Gi") as a number."""
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value).strip())
    if not match or (match.group(2) and match.group(2) not in _SUFFIXES):
        raise ClusterFileError(f"cannot read the Kubernetes quantity {value!r}")
    return float(match.group(1)) * _SUFFIXES.get(match.group(2), 1.0)
