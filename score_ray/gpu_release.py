"""Waiting for killed actors to give their GPU memory back before new engines start there.

`ray.kill` returns at once, and Ray frees the actor's resources as soon as it is marked dead,
but the GPU memory goes back only when every process that holds it has exited: the actor,
and under vLLM its engine-core and tensor-parallel worker processes, which notice their
parent's death on their own time. A vLLM started on that GPU meanwhile sees too little
free memory and refuses to start ("Free memory on device ... is less than desired GPU
memory utilization", vllm/v1/worker/utils.py `request_memory`), which would turn a
recoverable learner failure into a failed run.

So `Trainer.recover_learner` (GPU transports) calls `wait_for_gpu_release` between killing
the old groups and starting new engines: one small Ray task per rollout bundle, on that
bundle's GPUs, polls the free share of each device (`free_share`: the driver's count, all
processes included) until vLLM's `gpu_memory_utilization` fits, or fails after
`placement_timeout_s` naming the bundle and what was free. The polling itself is the pure
`wait_until_free`, tested with a fake probe and clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from score_ray.config import Config
from score_ray.placement import Placement, layout

POLL_INTERVAL_S = 1.0
SLACK_S = 30.0
"""The driver's deadline is the probes' plus this: scheduling and CUDA start-up of a probe."""


class GpuNotReleasedError(TimeoutError):
    """A GPU did not free enough memory for a new vLLM engine in time."""


def wait_until_free(
    probe: Callable[[], float],
    need: float,
    timeout_s: float,
    interval_s: float = POLL_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    where: str = "GPU",
) -> float:
    """Poll `probe()` (the free share of memory, 0..1) until it reaches `need`; return the
    share seen. Raise GpuNotReleasedError if it has not after `timeout_s`."""
    deadline = clock() + timeout_s
    while True:
        free = probe()
        if free + 1e-9 >= need:
            return free
        if clock() >= deadline:
            raise GpuNotReleasedError(
                f"{where}: {free:.0%} of its memory free after {timeout_s:g} s, a new vLLM "
                f"engine needs rollout.gpu_memory_utilization={need:g}; processes of the "
                "killed actors (or of another job) still hold it"
            )
        sleep(min(interval_s, max(0.0, deadline - clock())))


def free_share() -> float:
    """The smallest free share of memory over the GPUs this process sees (`mem_get_info`:
    the driver's figure, every process's allocations included)."""
    import torch

    shares = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        shares.append(free / total)
    if not shares:
        raise RuntimeError("no GPU visible to the release probe")
    return min(shares)


@dataclass(frozen=True)
class ReleaseProbes:
    """Where to wait: `count` rollout bundles of `gpus` GPUs each, until `need` is free."""

    count: int
    gpus: float
    need: float


def release_probes(cfg: Config) -> ReleaseProbes | None:
    """The probes a restart of the rollout engines waits on; None for CPU engines."""
    demand = next(d for d in layout(cfg) if "rollout" in d.role.split("+"))
    gpus = demand.bundle.get("GPU", 0.0)
    if not gpus:
        return None
    return ReleaseProbes(demand.count, gpus, cfg.rollout.gpu_memory_utilization)


def _probe_on_node(need: float, timeout_s: float, where: str) -> float:
    return wait_until_free(free_share, need, timeout_s, where=where)


def wait_for_gpu_release(cfg: Config, placement: Placement, timeout_s: float) -> None:
    """Block until every rollout bundle's GPUs have room for a new engine (see module doc).

    Each probe asks for its bundle's whole GPU share, so Ray also holds it back until the
    killed actors' resources are free; `max_calls=1` makes its process exit afterwards, so
    its own CUDA context does not stay on the GPU."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    probes = release_probes(cfg)
    group = placement.groups.get("rollout")
    if probes is None or group is None:
        return
    remote = ray.remote(num_cpus=0, num_gpus=probes.gpus, max_calls=1)(_probe_on_node)
    refs = [
        remote.options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=index
            )
        ).remote(probes.need, timeout_s, f"GPU of rollout bundle {index}")
        for index in range(probes.count)
    ]
    _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s + SLACK_S)
    for ref in pending:
        ray.cancel(ref, force=True)
    if pending:
        raise GpuNotReleasedError(
            f"{len(pending)} rollout bundle(s) found no GPU free within {timeout_s:g} s "
            "(their probes never started: the killed actors still hold the resources)"
        )
    ray.get(refs)  # raises the first GpuNotReleasedError from a node
