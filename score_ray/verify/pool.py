"""A pool of Verifier actors that scores completions with per-item deadlines.

Model output is hostile input and scorers are third-party code, so the pool
assumes any call can raise, hang or kill its actor:

- a call that raises scores 0 and is counted as an error;
- a call still running after `verifier.timeout_s` scores 0, is counted as a
  timeout, and its actor is killed and replaced (a hung thread, or a scorer
  spinning in C code, cannot be stopped any other way);
- an actor that dies is replaced and its item is retried once, then scores 0.

Each actor scores one item at a time, so a timeout always names the item that
hung and never costs an innocent item its reward; parallelism comes from
`verifier.num_workers`. An item's deadline starts when its actor is ready, so
a replacement's start-up (a new process, scorer imports) is not charged to it.

With each reward an actor returns the reward-hack canaries the completion
tripped (`score_ray.verify.canaries`); `VerifyStats` counts them, and the step's
metrics carry the counts as `verify/suspicious` and `verify/suspicious_<kind>`.

Nothing here ever stops a training step.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError

from score_ray.config import VerifierConfig
from score_ray.placement import Placement
from score_ray.tasks.base import Problem
from score_ray.verify.canaries import KINDS

_POLL_S = 0.05
_MAX_TRIES = 2


class InjectedFault(RuntimeError):
    """Raised by the verifier's fault injection (verifier.chaos_raise_rate)."""


class Verifier:
    """Scores one completion against its problem. Runs as a threaded Ray actor."""

    def __init__(self, cfg: VerifierConfig, answer_format: str):
        # The scorers import these lazily (seconds each); import them before `ready`
        # so that no item's deadline pays for them.
        import math_verify  # noqa: F401
        import reasoning_gym  # noqa: F401

        import score_ray.verify.scorers  # noqa: F401
        from score_ray.verify.sandbox import isolation

        if answer_format == "code":
            isolation()  # probe the host and start the fork server before any deadline runs
        self.cfg = cfg
        self.answer_format = answer_format

    def ready(self) -> bool:
        return True

    def score(self, problem: Problem, completion: str) -> tuple[float, tuple[str, ...]]:
        """The reward (0 or 1) and the reward-hack canaries the completion trips."""
        from score_ray.verify.scorers import completion_canaries, score_completion

        draw = _chaos_draw(problem.uid, completion)
        if draw < self.cfg.chaos_raise_rate:
            raise InjectedFault(f"injected verifier fault for {problem.uid}")
        if draw < self.cfg.chaos_raise_rate + self.cfg.chaos_hang_rate:
            time.sleep(10**9)  # injected hang; the pool's deadline must catch it
        reward = score_completion(
            problem,
            completion,
            self.answer_format,
            sandbox_timeout_s=self.cfg.sandbox_timeout_s,
            sandbox_memory_mb=self.cfg.sandbox_memory_mb,
        )
        return reward, completion_canaries(problem, completion, self.answer_format)


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
    suspicious: int = 0
    """Scored completions that tripped a reward-hack canary (`score_ray.verify.canaries`)."""
    suspicious_kinds: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    """The same, per canary kind (a completion may trip several)."""
    faulted: list[int] = field(default_factory=list)
    """Positions of the items that scored 0 by an error or a timeout, not by a verdict: the
    eval's majority vote keeps their answers out of the driver (one may hang a parser)."""

    def count_canaries(self, kinds: tuple[str, ...]) -> None:
        if kinds:
            self.suspicious += 1
        for kind in kinds:
            self.suspicious_kinds[kind] = self.suspicious_kinds.get(kind, 0) + 1

    def as_metrics(self) -> dict[str, float]:
        return {
            "verify/errors": self.errors,
            "verify/timeouts": self.timeouts,
            "verify/restarts": self.restarts,
            "verify/suspicious": self.suspicious,
            **{f"verify/suspicious_{kind}": n for kind, n in self.suspicious_kinds.items()},
        }


@dataclass
class _InFlight:
    item: int
    actor: int
    started: float
    tries: int


@dataclass
class _Slot:
    """One verifier actor and what it is doing."""

    actor: Any
    starting: ray.ObjectRef | None
    """The actor's `ready` call while it starts; None once it serves."""
    busy: bool = False


@dataclass
class VerifierPool:
    cfg: VerifierConfig
    answer_format: str
    placement: Placement = field(default_factory=lambda: Placement({}))
    slots: list[_Slot] = field(default_factory=list)
    restarts: int = 0
    """Actors replaced since the pool started (hung or dead)."""

    def __post_init__(self) -> None:
        self.slots = [self._new_slot(index) for index in range(self.cfg.num_workers)]

    @property
    def actors(self) -> list:
        return [slot.actor for slot in self.slots]

    def _new_slot(self, index: int) -> _Slot:
        remote = ray.remote(num_cpus=self.cfg.num_cpus)(Verifier)
        options = self.placement.options("verifier", index)
        actor = remote.options(**options).remote(self.cfg, self.answer_format)
        return _Slot(actor, actor.ready.remote())

    def score(self, items: list[tuple[Problem, str]]) -> tuple[list[float], VerifyStats]:
        """Rewards (0 or 1) for each (problem, completion), in order, plus fault counts."""
        scoring = self.start(len(items))
        scoring.submit(list(enumerate(items)))
        return scoring.finish()

    def start(self, size: int) -> Scoring:
        """A scoring round of `size` items that may arrive a few at a time
        (`Scoring.submit`), so verification overlaps whatever produces them."""
        return Scoring(self, size)

    def _fill(self, items, queue, inflight, stats) -> None:
        for index, slot in enumerate(self.slots):
            if slot.starting is not None and not self._started(index, stats):
                continue
            if queue and not slot.busy:
                item, tries = queue.popleft()
                problem, completion = items[item]
                ref = slot.actor.score.remote(problem, completion)
                inflight[ref] = _InFlight(item, index, time.monotonic(), tries)
                slot.busy = True

    def _started(self, index: int, stats: VerifyStats) -> bool:
        """Whether slot `index` finished starting (a failed start is replaced)."""
        slot = self.slots[index]
        done, _ = ray.wait([slot.starting], timeout=0)
        if not done:
            return False
        try:
            ray.get(slot.starting)
        except RayActorError:
            self._replace(index, stats)
            return False
        slot.starting = None
        return True

    def _collect(self, ref, inflight, rewards, queue, stats) -> None:
        call = inflight.pop(ref)
        self.slots[call.actor].busy = False
        try:
            reward, kinds = ray.get(ref)
            rewards[call.item] = float(reward)
            stats.count_canaries(kinds)
        except RayActorError:
            if call.tries < _MAX_TRIES:
                queue.append((call.item, call.tries + 1))
            else:
                stats.errors += 1
                stats.faulted.append(call.item)
            self._replace(call.actor, stats)
        except Exception:
            stats.errors += 1  # the scorer raised: reward stays 0
            stats.faulted.append(call.item)

    def _expire(self, inflight, stats) -> None:
        now = time.monotonic()
        late = [ref for ref, call in inflight.items() if now - call.started > self.cfg.timeout_s]
        for ref in late:
            call = inflight.pop(ref)
            stats.timeouts += 1
            stats.faulted.append(call.item)
            self._replace(call.actor, stats)

    def _replace(self, index: int, stats: VerifyStats) -> None:
        """Kill an actor and start a fresh one in its place."""
        ray.kill(self.slots[index].actor, no_restart=True)
        self.slots[index] = self._new_slot(index)
        stats.restarts += 1
        self.restarts += 1

    def shutdown(self) -> None:
        for slot in self.slots:
            ray.kill(slot.actor)


class Scoring:
    """One round of `VerifierPool` work: items are submitted by position as they become
    available, scored while more arrive (`poll`), and collected with `finish`."""

    def __init__(self, pool: VerifierPool, size: int) -> None:
        self.pool = pool
        self.items: list[tuple[Problem, str] | None] = [None] * size
        self.rewards = [0.0] * size
        self.stats = VerifyStats()
        self.queue: deque[tuple[int, int]] = deque()
        self.inflight: dict[ray.ObjectRef, _InFlight] = {}
        self.busy_s = 0.0
        """Wall time during which some item was queued or being scored."""
        self._busy_since: float | None = None

    def submit(self, items: list[tuple[int, tuple[Problem, str]]]) -> None:
        """Queue (position, (problem, completion)) items and hand them to idle verifiers."""
        for position, item in items:
            self.items[position] = item
            self.queue.append((position, 1))
        self.poll(timeout=0.0)

    def poll(self, timeout: float = 0.0) -> None:
        """Start queued items on idle verifiers, collect finished ones, expire late ones;
        waits up to `timeout` for one to finish."""
        pool, stats = self.pool, self.stats
        pool._fill(self.items, self.queue, self.inflight, stats)
        if self._busy_since is None and (self.queue or self.inflight):
            self._busy_since = time.perf_counter()
        waiting = list(self.inflight) + [s.starting for s in pool.slots if s.starting is not None]
        if waiting:
            ready, _ = ray.wait(waiting, num_returns=1, timeout=timeout)
            for ref in ready:
                if ref in self.inflight:
                    pool._collect(ref, self.inflight, self.rewards, self.queue, stats)
        pool._expire(self.inflight, stats)
        pool._fill(self.items, self.queue, self.inflight, stats)
        if self._busy_since is not None and not (self.queue or self.inflight):
            self.busy_s += time.perf_counter() - self._busy_since
            self._busy_since = None

    def finish(self) -> tuple[list[float], VerifyStats]:
        """Wait for every submitted item; rewards in position order, plus fault counts."""
        while self.queue or self.inflight:
            self.poll(timeout=_POLL_S)
        self.stats.seconds = self.busy_s
        return self.rewards, self.stats
