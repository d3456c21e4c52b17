"""RolloutGroup: the driver's handle on all RolloutWorker actors (data parallel).

A worker that dies (node lost, OOM, `ray.kill`) is replaced by a new actor,
which is given the newest weights before it serves; the call it was serving is
then retried on it. Replacements are counted in `restarts`. Only with the
object_store transport: an NCCL group cannot take in a new member, and a
colocated worker shares its GPU with a learner rank; there a dead worker raises
`WeightSyncError`, and the trainer rebuilds both groups.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import ray
from ray.exceptions import RayActorError

from score_ray.algo.traces import Attempt, Trace
from score_ray.config import Config
from score_ray.placement import Placement
from score_ray.rollout.worker import RolloutWorker, rollout_env
from score_ray.tasks.base import Problem
from score_ray.transport import WeightHandle, WeightSyncError, choose_transport

log = logging.getLogger(__name__)


class RolloutGroup:
    def __init__(self, cfg: Config, model_path: str, placement: Placement | None = None) -> None:
        self.cfg = cfg
        self.model_path = model_path
        self.placement = placement or Placement({})
        self.remote = ray.remote(
            num_cpus=cfg.rollout.num_cpus,
            num_gpus=cfg.rollout.num_gpus * cfg.rollout.tensor_parallel_size,
            resources=cfg.rollout.resources or None,
            runtime_env={"env_vars": rollout_env(cfg)},
        )(RolloutWorker)
        self.workers = [self._start(i) for i in range(cfg.rollout.num_workers)]
        self.latest: WeightHandle | None = None
        """The newest weights sent; a replacement worker is given them before it serves."""
        self.restarts = 0
        ray.get([w.ready.remote() for w in self.workers])

    def generate(
        self,
        problems: list[Problem],
        samples_per_prompt: int,
        greedy: bool,
        seed: int,
        attempt2_samples: int = 1,
        first_attempts: list[list[Attempt] | None] | None = None,
    ) -> list[Trace]:
        """Traces for all problems, S * M per problem, in problem order (see
        RolloutWorker.generate_stream for the layout and `first_attempts`)."""
        chunks = _split(problems, len(self.workers))
        given = _split_like(first_attempts, chunks)
        results = self._on_each(
            lambda index, worker: worker.generate.remote(
                chunks[index],
                samples_per_prompt,
                greedy,
                seed + index,
                attempt2_samples,
                given[index],
            ),
            only=[i for i, chunk in enumerate(chunks) if chunk],
        )
        return [trace for traces in results for trace in traces]

    def sample_first_attempts(
        self, problems: list[Problem], samples_per_prompt: int, seed: int
    ) -> list[list[Attempt]]:
        """S sampled first attempts per problem, in problem order (the offline pool)."""
        chunks = _split(problems, len(self.workers))
        results = self._on_each(
            lambda index, worker: worker.sample_first_attempts.remote(
                chunks[index], samples_per_prompt, seed + index
            ),
            only=[i for i, chunk in enumerate(chunks) if chunk],
        )
        return [attempts for part in results for attempts in part]

    def stream(
        self,
        problems: list[Problem],
        samples_per_prompt: int,
        greedy: bool,
        seed: int,
        attempt2_samples: int = 1,
        first_attempts: list[list[Attempt] | None] | None = None,
        idle_s: float = 0.05,
    ) -> Iterator[list[tuple[int, Trace]]]:
        """The traces of `generate` as they finish, as lists of (index in `generate`'s
        output, trace); an empty list after `idle_s` without news, so that the caller
        can tend other work (the verifier pool) while the engines run.

        Same split and seeds as `generate` (RolloutWorker.generate_stream). A dead worker
        is replaced and its call restarted on the replacement; its traces that were
        already yielded are kept and not yielded again.
        """
        chunks = _split(problems, len(self.workers))
        given = _split_like(first_attempts, chunks)
        offsets = [0]
        for chunk in chunks[:-1]:
            offsets.append(offsets[-1] + len(chunk) * samples_per_prompt * attempt2_samples)

        def start(index: int) -> Any:
            worker = self.workers[index]
            return worker.generate_stream.options(num_returns="streaming").remote(
                chunks[index],
                samples_per_prompt,
                greedy,
                seed + index,
                attempt2_samples,
                given[index],
            )

        streams = {start(i): i for i, chunk in enumerate(chunks) if chunk}
        delivered: set[int] = set()
        while streams:
            ready, _ = ray.wait(list(streams), num_returns=1, timeout=idle_s)
            if not ready:
                yield []
                continue
            stream = ready[0]
            index = streams.pop(stream)
            try:
                part = ray.get(next(stream))
            except StopIteration:
                continue  # this worker is done
            except RayActorError:
                self._replace(index)
                streams[start(index)] = index
                continue
            streams[stream] = index
            found = [(offsets[index] + i, trace) for i, trace in part]
            fresh = [(i, trace) for i, trace in found if i not in delivered]
            delivered.update(i for i, _ in fresh)
            yield fresh

    def cache_stats(self) -> list[dict[str, dict[str, int]]]:
        """Each worker's prompt tokens and prefix-cache hits per attempt (since start)."""
        return self._on_each(lambda _, worker: worker.cache_stats.remote())

    def continue_attempt(
        self, prompt_ids: list[list[int]], greedy: bool, seed: int
    ) -> list[tuple[list[int], str]]:
        """One more attempt per token-id prompt, split over the workers, in order."""
        chunks = _split(prompt_ids, len(self.workers))
        results = self._on_each(
            lambda index, worker: worker.continue_attempt.remote(chunks[index], greedy, seed),
            only=[i for i, chunk in enumerate(chunks) if chunk],
        )
        return [completion for part in results for completion in part]

    def update_weights(self, handle: WeightHandle) -> list[int]:
        versions = self._on_each(lambda _, worker: worker.update_weights.remote(handle))
        # Set afterwards: a replacement made during this call gets the previous
        # weights, then this handle through the retried call.
        self.latest = handle
        return versions

    def init_weight_transport(self, init_infos: list[dict[str, Any]]) -> None:
        """Worker i joins the learner's transfer group with `init_infos[i]` (all at once)."""
        self._on_each(lambda i, worker: worker.init_weight_transport.remote(init_infos[i]))

    def sleep(self) -> None:
        """Colocated: free the GPUs for the learner (weights and KV cache released)."""
        self._on_each(lambda _, worker: worker.sleep.remote())

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Map back `tags` of every engine ("weights", then after the sync "kv_cache")."""
        self._on_each(lambda _, worker: worker.wake_up.remote(tags))

    def sequence_logprobs(self, token_id_lists: list[list[int]]) -> list[list[float]]:
        return self._on_each(
            lambda _, worker: worker.sequence_logprobs.remote(token_id_lists), only=[0]
        )[0]

    def node_ids(self) -> list[str]:
        return self._on_each(lambda _, worker: worker.node_id.remote())

    def weight_versions(self) -> list[int]:
        return self._on_each(lambda _, worker: worker.weight_version.remote())

    def _on_each(
        self, call: Callable[[int, Any], ray.ObjectRef], only: list[int] | None = None
    ) -> list[Any]:
        """Run `call(index, worker)` on each chosen worker; replace a dead worker and
        retry its call once on the replacement."""
        indices = list(range(len(self.workers))) if only is None else only
        refs = {index: call(index, self.workers[index]) for index in indices}
        results = []
        for index in indices:
            try:
                results.append(ray.get(refs[index]))
            except RayActorError:
                self._replace(index)
                results.append(ray.get(call(index, self.workers[index])))
        return results

    def _start(self, index: int) -> Any:
        options = self.placement.options("rollout", index)
        return self.remote.options(**options).remote(self.cfg, self.model_path, index)

    def _replace(self, index: int) -> None:
        transport = choose_transport(self.cfg)
        if transport != "object_store":
            # The trainer rebuilds both groups from the newest checkpoint, as for a dead learner.
            raise WeightSyncError(
                f"rollout worker {index}",
                f"rollout worker {index} died; with sync.transport={transport} it cannot rejoin "
                "the running group",
            )
        log.warning("rollout worker %d died; starting a replacement", index)
        self.workers[index] = self._start(index)
        ray.get(self.workers[index].ready.remote())
        if self.latest is not None:
            ray.get(self.workers[index].update_weights.remote(self.latest))
        self.restarts += 1

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)


def _split_like(items: list | None, chunks: list[list]) -> list[list | None]:
    """`items` (aligned with the concatenated `chunks`) cut into the same pieces; None stays
    None for every piece."""
    if items is None:
        return [None] * len(chunks)
    pieces, start = [], 0
    for chunk in chunks:
        pieces.append(items[start : start + len(chunk)])
        start += len(chunk)
    return pieces


def _split(items: list, parts: int) -> list[list]:
    """Contiguous, near-equal chunks (order preserved when concatenated)."""
    size, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for index in range(parts):
        stop = start + size + (1 if index < extra else 0)
        chunks.append(items[start:stop])
        start = stop
    return chunks
