"""A pool of Verifier actors that scores completions with per-item deadlines.

Model output is hostile input and scorers are third-party code, so the pool
assumes any call can raise, hang or kill its actor:

- a call that raises scores 0 and is counted as an error;
- a call still running after `verifier.timeout_s` scores 0, is counted as a
  timeout, and its actor is killed and replaced (a hung thread cannot be
  stopped any other way); the actor's other in-flight items are re-queued;
- an actor that dies is replaced and its items are retried once, then score 0.

Nothing here ever stops a training step.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from dataclasses import dataclass, field

import ray
from ray.exceptions import RayActorError

from score_ray.config import VerifierConfig
from score_ray.tasks.base import Problem

SLOTS_PER_ACTOR = 4
"""Concurrent calls per actor (threaded actor): a hung call blocks one slot, not the actor."""
_POLL_S = 0.05
_MAX_TRIES = 2


class InjectedFault(RuntimeError):
    """Raised by the verifier's fault injection (verifier.chaos_raise_rate)."""


class Verifier:
    """Scores one completion against its problem. Runs as a threaded Ray actor."""

    def __init__(self, answer_format: str, chaos_raise_rate: float, chaos_hang_rate: float):
        self.answer_format = answer_format
        self.chaos_raise_rate = chaos_raise_rate
        self.chaos_hang_rate = chaos_hang_rate

    def score(self, problem: Problem, completion: str) -> float:
        from score_ray.verify.scorers import score_completion

        draw = _chaos_draw(problem.uid, completion)
        if draw < self.chaos_raise_rate:
            raise InjectedFault(f"injected verifier fault for {problem.uid}")
        if draw < self.chaos_raise_rate + self.chaos_hang_rate:
            time.sleep(10**9)  # injected hang; the pool's deadline must catch it
        return score_completion(problem, completion, self.answer_format)


def _chaos_draw(uid: str, completion: str) -> float:
    """A deterministic uniform draw in [0, 1) per (problem, completion)."""
    digest = hashlib.sha256(f"{uid}\x00{completion}".encode("utf-8", "replace")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class VerifyStats:
    errors: int = 0
    timeouts: int = 0
    restarts: int = 0
    seconds: float = 0.0

    def as_metrics(self) -> dict[str, float]:
        return {
            "verify/errors": self.errors,
            "verify/timeouts": self.timeouts,
            "verify/restarts": self.restarts,
        }


@dataclass
class _InFlight:
    item: int
    actor: int
    started: float
    tries: int


@dataclass
class VerifierPool:
    cfg: VerifierConfig
    answer_format: str
    actors: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.actors = [self._new_actor() for _ in range(self.cfg.num_workers)]

    def _new_actor(self):
        remote = ray.remote(num_cpus=self.cfg.num_cpus, max_concurrency=SLOTS_PER_ACTOR)(Verifier)
        return remote.remote(
            self.answer_format, self.cfg.chaos_raise_rate, self.cfg.chaos_hang_rate
        )

    def score(self, items: list[tuple[Problem, str]]) -> tuple[list[float], VerifyStats]:
        """Rewards (0 or 1) for each (problem, completion), in order, plus fault counts."""
        started = time.perf_counter()
        rewards = [0.0] * len(items)
        stats = VerifyStats()
        queue: deque[tuple[int, int]] = deque((i, 1) for i in range(len(items)))
        inflight: dict[ray.ObjectRef, _InFlight] = {}
        busy = [0] * len(self.actors)
        while queue or inflight:
            self._fill(items, queue, inflight, busy)
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=_POLL_S)
            for ref in ready:
                self._collect(ref, inflight, busy, rewards, queue, stats)
            self._expire(inflight, busy, queue, stats)
        stats.seconds = time.perf_counter() - started
        return rewards, stats

    def _fill(self, items, queue, inflight, busy) -> None:
        for actor_index, actor in enumerate(self.actors):
            while queue and busy[actor_index] < SLOTS_PER_ACTOR:
                item, tries = queue.popleft()
                problem, completion = items[item]
                ref = actor.score.remote(problem, completion)
                inflight[ref] = _InFlight(item, actor_index, time.monotonic(), tries)
                busy[actor_index] += 1

    def _collect(self, ref, inflight, busy, rewards, queue, stats) -> None:
        call = inflight.pop(ref)
        busy[call.actor] -= 1
        try:
            rewards[call.item] = float(ray.get(ref))
        except RayActorError:
            if call.tries < _MAX_TRIES:
                queue.append((call.item, call.tries + 1))
            else:
                stats.errors += 1
            self._replace(call.actor, inflight, busy, queue, stats)
        except Exception:
            stats.errors += 1  # the scorer raised: reward stays 0

    def _expire(self, inflight, busy, queue, stats) -> None:
        now = time.monotonic()
        late = [ref for ref, call in inflight.items() if now - call.started > self.cfg.timeout_s]
        hung_actors = set()
        for ref in late:
            call = inflight.pop(ref)
            busy[call.actor] -= 1
            stats.timeouts += 1
            hung_actors.add(call.actor)
        for actor_index in hung_actors:
            self._replace(actor_index, inflight, busy, queue, stats)

    def _replace(self, actor_index, inflight, busy, queue, stats) -> None:
        """Kill an actor, start a fresh one in its place, re-queue its other items."""
        ray.kill(self.actors[actor_index], no_restart=True)
        self.actors[actor_index] = self._new_actor()
        stats.restarts += 1
        for ref in [r for r, call in inflight.items() if call.actor == actor_index]:
            call = inflight.pop(ref)
            queue.appendleft((call.item, call.tries))
        busy[actor_index] = 0

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
