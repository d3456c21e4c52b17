"""Sleep and wake-up of a colocated vLLM engine: which calls, in which order, and when
the engine may serve again.

A colocated rollout worker shares its GPU with a learner rank, so each step goes

    sleep (level 2) -> learner trains -> wake "weights" -> weight sync -> wake "kv_cache"

Waking in two parts keeps the peak low: vLLM's `wake_up()` without tags maps back the whole
`gpu_memory_utilization` budget at once, KV cache included, while the learner's sync still
holds its exported copy of the weights (cuda_ipc). The tags are vLLM 0.32's
(`SLEEP_TAGS` in vllm/v1/executor/abstract.py: "weights", "kv_cache"; the engine resumes
scheduling by itself once nothing is asleep).

Level 2, not 1: level 1 copies the weights to pinned CPU memory and back every step; level 2
drops them, and the sync overwrites every parameter anyway (vLLM keeps the model's buffers,
e.g. rotary caches and attention scales, across level 2 itself: gpu_worker.sleep). The cost
is that, between the wake-up and the sync, the weights are garbage. `SleepState` therefore
refuses to wake the KV cache, or to serve, until a sync has loaded new weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

SLEEP_LEVEL = 2
WEIGHTS = "weights"
KV_CACHE = "kv_cache"
TAGS = (WEIGHTS, KV_CACHE)
"""vLLM's sleep tags, in the order they must wake."""


class EngineAsleepError(RuntimeError):
    """The engine was asked to do something its sleep state does not allow."""


@dataclass
class SleepState:
    """What of the engine is asleep, and whether its weights still need a sync (level 2)."""

    level: int = SLEEP_LEVEL
    asleep: set[str] = field(default_factory=set)
    weights_discarded: bool = False
    """Level 2 dropped the weights: they are garbage until `loaded()`."""

    def to_sleep(self) -> bool:
        """Whether `llm.sleep(level)` must be called (False: already asleep)."""
        return not self.asleep

    def slept(self) -> None:
        self.asleep = set(TAGS)
        self.weights_discarded = self.level >= 2

    def to_wake(self, tags: Sequence[str] | None) -> list[str]:
        """The tags to pass to `llm.wake_up`, in vLLM's order (all asleep ones for None);
        raises if the order would map the KV cache before new weights are in."""
        wanted = set(TAGS if tags is None else tags)
        unknown = wanted - set(TAGS)
        if unknown:
            raise ValueError(f"unknown sleep tags {sorted(unknown)}; vLLM's are {list(TAGS)}")
        wake = [tag for tag in TAGS if tag in wanted and tag in self.asleep]
        if KV_CACHE in wake:
            if WEIGHTS in self.asleep and WEIGHTS not in wake:
                raise EngineAsleepError("wake the weights before the KV cache")
            if self.weights_discarded:
                raise EngineAsleepError(
                    f"the KV cache wakes only after a weight sync: level-{self.level} sleep "
                    "discarded the weights (wake 'weights', sync, then wake 'kv_cache')"
                )
        return wake

    def woke(self, tags: Sequence[str]) -> None:
        self.asleep -= set(tags)

    def check_loadable(self) -> None:
        """Before a weight sync: the weights' memory must be mapped."""
        if WEIGHTS in self.asleep:
            raise EngineAsleepError("weights are asleep: wake_up(['weights']) before a sync")

    def loaded(self) -> None:
        """A sync loaded every parameter."""
        self.weights_discarded = False

    def check_serving(self) -> None:
        """Before generating or scoring: everything awake, weights real."""
        if self.asleep or self.weights_discarded:
            raise EngineAsleepError(
                f"the engine cannot serve: asleep {sorted(self.asleep)}, weights "
                f"{'discarded (no sync since sleep)' if self.weights_discarded else 'loaded'}"
            )
