"""RolloutGroup: the driver's handle on all RolloutWorker actors (data parallel)."""

from __future__ import annotations

import ray

from score_ray.algo.traces import Trace
from score_ray.config import Config
from score_ray.rollout.worker import RolloutWorker, rollout_env
from score_ray.sync import WeightHandle
from score_ray.tasks.base import Problem


class RolloutGroup:
    def __init__(self, cfg: Config, model_path: str) -> None:
        remote = ray.remote(
            num_cpus=cfg.rollout.num_cpus,
            num_gpus=cfg.rollout.num_gpus,
            runtime_env={"env_vars": rollout_env(cfg)},
        )(RolloutWorker)
        self.workers = [remote.remote(cfg, model_path, i) for i in range(cfg.rollout.num_workers)]
        ray.get([w.ready.remote() for w in self.workers])

    def generate(
        self, problems: list[Problem], samples_per_prompt: int, greedy: bool, seed: int
    ) -> list[Trace]:
        """Traces for all problems, S per problem, in problem order."""
        chunks = _split(problems, len(self.workers))
        refs = [
            worker.generate.remote(chunk, samples_per_prompt, greedy, seed + index)
            for index, (worker, chunk) in enumerate(zip(self.workers, chunks, strict=True))
            if chunk
        ]
        return [trace for traces in ray.get(refs) for trace in traces]

    def update_weights(self, handle: WeightHandle) -> list[int]:
        return ray.get([w.update_weights.remote(handle) for w in self.workers])

    def sequence_logprobs(self, token_id_lists: list[list[int]]) -> list[list[float]]:
        return ray.get(self.workers[0].sequence_logprobs.remote(token_id_lists))

    def weight_versions(self) -> list[int]:
        return ray.get([w.weight_version.remote() for w in self.workers])

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)


def _split(items: list, parts: int) -> list[list]:
    """Contiguous, near-equal chunks (order preserved when concatenated)."""
    size, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for index in range(parts):
        stop = start + size + (1 if index < extra else 0)
        chunks.append(items[start:stop])
        start = stop
    return chunks
