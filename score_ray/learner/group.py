"""LearnerGroup: the driver's handle on all DeepSpeed ranks, each a Ray actor.

Every method fans one call out to all ranks (they run collectives together)
and returns rank 0's answer or the ranks' answers combined. If any rank dies,
the call raises `LearnerFailure`: the surviving ranks' process group is broken
too, so the only recovery is a new group restored from a checkpoint.
"""

from __future__ import annotations

from typing import Any

import ray
import torch
from ray.exceptions import RayActorError

from score_ray.algo import TraceBatch
from score_ray.algo.micro_batches import rank_micro_batches
from score_ray.config import Config
from score_ray.learner.actor import Learner, LearnerShard
from score_ray.placement import Placement
from score_ray.transport import WeightHandle


class LearnerFailure(RuntimeError):
    """A learner rank died; the group must be rebuilt from a checkpoint."""


class LearnerGroup:
    def __init__(self, cfg: Config, model_path: str, placement: Placement | None = None) -> None:
        self.cfg = cfg
        placement = placement or Placement({})
        remote = ray.remote(
            num_cpus=cfg.learner.num_cpus,
            num_gpus=cfg.learner.num_gpus,
            resources=cfg.learner.resources or None,
            max_concurrency=1,
        )(Learner)
        self.ranks = [
            remote.options(**placement.options("learner", rank)).remote(cfg, model_path, rank)
            for rank in range(cfg.learner.world_size)
        ]
        # Rank 0 chooses the rendezvous address on its own node.
        master_addr, master_port = self._get(self.ranks[0].master_address.remote())
        self._get([rank.setup.remote(master_addr, master_port) for rank in self.ranks])

    @staticmethod
    def _get(refs: Any) -> Any:
        try:
            return ray.get(refs)
        except RayActorError as err:
            raise LearnerFailure(f"a learner rank died: {err}") from err

    def train_step(
        self,
        batch: TraceBatch,
        advantage1: torch.Tensor,  # [B]
        advantage2: torch.Tensor,  # [B]
        stage: int,
        attempt1_weight: torch.Tensor | None = None,  # [B] (score_loss); None: all 1
    ) -> dict[str, float]:
        """Split the batch into equal contiguous shards, one per rank, cut each into
        micro-batches (fixed count or token budget, the same number on every rank) and update."""
        world = len(self.ranks)
        size = len(batch) // world
        if attempt1_weight is None:
            attempt1_weight = torch.ones_like(advantage1)
        pieces = [batch.slice(r * size, (r + 1) * size) for r in range(world)]
        micro_batches = rank_micro_batches(
            [piece.lengths() for piece in pieces],
            self.cfg.learner.micro_batch_size,
            self.cfg.learner.max_tokens_per_micro_batch,
        )
        shards = [
            LearnerShard(
                pieces[r],
                advantage1[r * size : (r + 1) * size],
                advantage2[r * size : (r + 1) * size],
                attempt1_weight[r * size : (r + 1) * size],
                micro_batches[r],
            )
            for r in range(world)
        ]
        calls = [
            rank.train_step.remote(shard, stage)
            for rank, shard in zip(self.ranks, shards, strict=True)
        ]
        return _combine_rank_stats(self._get(calls))

    def node_ids(self) -> list[str]:
        return self._get([r.node_id.remote() for r in self.ranks])

    def sequence_logprobs(self, token_id_lists: list[list[int]]) -> list[list[float]]:
        return self._get([r.sequence_logprobs.remote(token_id_lists) for r in self.ranks])[0]

    def attempt_logprobs(self, batch: TraceBatch) -> list[tuple[list[float], list[float]]]:
        """Rank 0's per-trace attempt log-probs at the sampling temperatures."""
        return self._get(self.ranks[0].attempt_logprobs.remote(batch))

    def send_weights(self, version: int) -> WeightHandle:
        return self._get([r.send_weights.remote(version) for r in self.ranks])[0]

    # Weight-transport plumbing, used by score_ray.sync (connect_weight_transport, sync_weights).

    def weight_sync_address(self) -> tuple[str, int]:
        """An address and free port on rank 0's node for the transfer group's rendezvous."""
        return self._get(self.ranks[0].master_address.remote())

    def init_weight_transport(self, init_info: dict[str, Any]) -> None:
        self._get(self.ranks[0].init_weight_transport.remote(init_info))

    def describe_weights(self, version: int) -> WeightHandle:
        return self._get(self.ranks[0].describe_weights.remote(version))

    def release_weights(self) -> None:
        self._get([r.release_weights.remote() for r in self.ranks])

    def memory_report(self) -> list[dict[str, Any]]:
        """Each rank's `Learner.memory_report` (reference placement and bytes, CUDA figures)."""
        return self._get([r.memory_report.remote() for r in self.ranks])

    def save_pretrained(self, path: str) -> None:
        self._get([r.save_pretrained.remote(path) for r in self.ranks])

    def send_adapter(self, version: int) -> WeightHandle:
        """learner.lora.sync=adapter: rank 0 publishes the adapter (ZeRO <= 2: it has it)."""
        return self._get(self.ranks[0].send_adapter.remote(version))

    def save_adapter(self, path: str) -> None:
        """LoRA only: the adapter alone (rank 0 writes it)."""
        self._get([r.save_adapter.remote(path) for r in self.ranks])

    def save_checkpoint(self, directory: str) -> None:
        self._get([r.save_checkpoint.remote(directory) for r in self.ranks])

    def load_checkpoint(self, directory: str) -> None:
        self._get([r.load_checkpoint.remote(directory) for r in self.ranks])

    def shutdown(self) -> None:
        for rank in self.ranks:
            ray.kill(rank)


def _combine_rank_stats(results: list[dict[str, Any]]) -> dict[str, float]:
    """Average the per-rank means; pool token-level KL sums over ranks."""
    world = len(results)
    kl1_tokens = sum(r["kl1_tokens"] for r in results)
    kl2_tokens = sum(r["kl2_tokens"] for r in results)
    stats = {
        "loss": sum(r["loss"] for r in results) / world,
        "loss/pg": sum(r["pg_loss"] for r in results) / world,
        "loss/kl": sum(r["kl_loss"] for r in results) / world,
        "kl/attempt1": sum(r["kl1_sum"] for r in results) / max(kl1_tokens, 1.0),
        "kl/attempt2": sum(r["kl2_sum"] for r in results) / max(kl2_tokens, 1.0),
        "grad_norm": results[0]["grad_norm"],
        "learner/micro_batches": results[0].get("micro_batches", float("nan")),
    }
    is_tokens = sum(r.get("is_tokens", 0.0) for r in results)
    if is_tokens:  # asynchronous rollout: the truncated importance weights (mean, share capped)
        stats["is/weight_mean"] = sum(r["is_weight_sum"] for r in results) / is_tokens
        stats["is/capped"] = sum(r["is_capped"] for r in results) / is_tokens
    return stats
