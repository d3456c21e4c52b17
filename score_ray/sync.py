"""Weight sync, the driver's side: the two calls that move a learner's weights to every
RolloutWorker.

    connect_weight_transport(learner, rollout)    once per learner group (NCCL rendezvous)
    handle = sync_weights(learner, rollout, v)    every step: the rollout now serves version v

Both pair the learner half and the rollout half of the transport that `choose_transport`
picks (`score_ray.transport`: object_store, nccl, cuda_ipc). This module imports the two
groups; the groups and their actors import only `score_ray.transport`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from score_ray.transport import (
    MIB,
    StaleWeightsError,
    WeightHandle,
    choose_transport,
    nccl_init_infos,
    run_concurrently,
)

if TYPE_CHECKING:
    from score_ray.learner.group import LearnerGroup
    from score_ray.rollout.group import RolloutGroup

__all__ = ["choose_transport", "connect_weight_transport", "sync_weights"]


def connect_weight_transport(learner: LearnerGroup, rollout: RolloutGroup) -> None:
    """Set up the chosen transport between a learner group and the rollout workers.
    NCCL: learner rank 0 and every vLLM worker join one group, all at once."""
    cfg = learner.cfg
    transport = choose_transport(cfg)
    if transport == "cuda_ipc":
        rollout.init_weight_transport([{"packed": False}] * cfg.rollout.num_workers)
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
        )


def sync_weights(learner: LearnerGroup, rollout: RolloutGroup, version: int) -> WeightHandle:
    """Give every rollout worker the learner's current weights as `version`."""
    transport = choose_transport(learner.cfg)
    if transport == "object_store":
        handle = learner.send_weights(version)
        rollout.update_weights(handle)
    elif transport == "nccl":
        # Receivers need names, shapes and dtypes before the first byte arrives.
        handle = learner.describe_weights(version)
        held = max(rollout.weight_versions())
        if held >= version:  # a worker refusing mid-broadcast would hang the learner
            raise StaleWeightsError(f"rollout holds version {held}, cannot sync {version}")
        run_concurrently(
            lambda: learner.send_weights(version), lambda: rollout.update_weights(handle)
        )
    else:  # cuda_ipc
        handle = learner.send_weights(version)
        try:
            rollout.update_weights(handle)
        finally:
            learner.release_weights()
    return handle
