"""Weight sync, the driver's side: the two calls that move a learner's weights to every
RolloutWorker.

    connect_weight_transport(learner, rollout)    once per learner group (NCCL rendezvous)
    handle = sync_weights(learner, rollout, v)    every step: the rollout now serves version v

Both pair the learner half and the rollout half of the transport that `choose_transport`
picks (`score_ray.transport`: object_store, nccl, cuda_ipc). This module imports the two
groups; the groups and their actors import only `score_ray.transport`.

Failing fast: an NCCL broadcast has no timeout, and a CUDA IPC export or load can wait on a
peer forever. So every step of the GPU transports, set-up included, runs under
`sync.timeout_s` (`run_concurrently`): a side that has not answered by then, or a rollout
worker that died (it cannot rejoin the group), raises `WeightSyncError` naming the role. The
trainer then rebuilds learner and rollout groups from the newest checkpoint, as for a dead
learner rank. object_store has no deadline: Ray reports a dead peer there, and a dead
rollout worker is replaced in its group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from score_ray.transport import (
    MIB,
    StaleWeightsError,
    WeightHandle,
    WeightSyncError,
    choose_transport,
    nccl_init_infos,
    run_concurrently,
    sync_deadline,
)

if TYPE_CHECKING:
    from score_ray.learner.group import LearnerGroup
    from score_ray.rollout.group import RolloutGroup

__all__ = ["WeightSyncError", "choose_transport", "connect_weight_transport", "sync_weights"]


def connect_weight_transport(learner: LearnerGroup, rollout: RolloutGroup) -> None:
    """Set up the chosen transport between a learner group and the rollout workers.
    NCCL: learner rank 0 and every vLLM worker join one group, all at once."""
    cfg = learner.cfg
    transport = choose_transport(cfg)
    timeout_s = sync_deadline(cfg)
    what = f"{transport} weight transport set-up"
    if transport == "cuda_ipc":
        run_concurrently(
            lambda: rollout.init_weight_transport([{"packed": False}] * cfg.rollout.num_workers),
            timeout_s=timeout_s,
            roles=("rollout",),
            what=what,
        )
    elif transport == "nccl":
        address, port = learner.weight_sync_address()
        trainer, workers = nccl_init_infos(
            address,
            port,
            cfg.rollout.num_workers,
            cfg.rollout.tensor_parallel_size,
            cfg.sync.bucket_mb * MIB,
        )
        run_concurrently(
            lambda: learner.init_weight_transport(trainer),
            lambda: rollout.init_weight_transport(workers),
            timeout_s=timeout_s,
            roles=("learner", "rollout"),
            what=what,
        )


def sync_weights(learner: LearnerGroup, rollout: RolloutGroup, version: int) -> WeightHandle:
    """Give every rollout worker the learner's current weights as `version`."""
    transport = choose_transport(learner.cfg)
    what = f"{transport} weight sync of version {version}"

    def bounded(call: Callable[[], Any], role: str) -> Any:
        return run_concurrently(
            call, timeout_s=sync_deadline(learner.cfg), roles=(role,), what=what
        )[0]

    lora = learner.cfg.learner.lora
    if lora.rank > 0 and lora.sync == "adapter":
        # The adapter alone, through the object store whatever the transport: a few MB.
        handle = learner.send_adapter(version)
        rollout.update_weights(handle)
    elif transport == "object_store":
        handle = learner.send_weights(version)
        rollout.update_weights(handle)
    elif transport == "nccl":
        # Receivers need names, shapes and dtypes before the first byte arrives.
        handle = bounded(lambda: learner.describe_weights(version), "learner")
        held = max(bounded(rollout.weight_versions, "rollout"))
        if held >= version:  # a worker refusing mid-broadcast would hang the learner
            raise StaleWeightsError(f"rollout holds version {held}, cannot sync {version}")
        run_concurrently(
            lambda: learner.send_weights(version),
            lambda: rollout.update_weights(handle),
            timeout_s=sync_deadline(learner.cfg),
            roles=("learner", "rollout"),
            what=what,
        )
    else:  # cuda_ipc
        handle = bounded(lambda: learner.send_weights(version), "learner")
        try:
            bounded(lambda: rollout.update_weights(handle), "rollout")
        finally:
            bounded(learner.release_weights, "learner")
    return handle
