"""One-step-off rollout: step k+1's batch is generated and verified while the learner
updates on step k (`train.max_staleness` = 1); with 0, each step generates its own batch
first, the synchronous loop.

Timeline of one-step-off (as verl's one_step_off_policy recipe, after AReaL, arXiv
2505.24298, and Noukhovitch et al., "Asynchronous RLHF", arXiv 2410.18252):

    driver:   take(k) ... prefetch(k+1) -> learn(k) --------> settle() -> sync(v_k) -> log
    rollout:                  generate+verify(k+1) with v_{k-1} |          (weights written)

- Generation k+1 starts once step k's batch is in hand, on the weights the engines hold then,
  version k-1 (the learner is at k-1 while it learns step k).
- `settle` waits for it before the sync that follows learn(k): the sync writes into the very
  vLLM engines that generate, so a batch is never generated on a mix of two versions.
- Step k+1 then learns on traces of version k-1 with a learner at version k: staleness 1,
  the bound. The learner corrects the policy gradient with truncated importance weights
  (`score_ray.algo.losses.truncated_importance_weights`) and drops traces older than the bound
  (`stale_traces`; none under this schedule, a guard for anything that would break it).

The background rollout runs in a driver thread that blocks on Ray calls (the engines and
verifiers are actors, so the work itself is in their processes); only one rollout is ever in
flight, and the driver touches the rollout group only after `settle`.

Checkpoints save the in-flight rollout and resume replays it (`state` / `restore`): by the
time a checkpoint is written (after the sync) it has finished, so the resumed run trains on the
very traces the uninterrupted run would have, and each step's batch is drawn once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from score_ray.algo.traces import Trace
from score_ray.verify.pool import VerifyStats


@dataclass
class Rollout:
    """One step's generated and verified batch."""

    step: int
    traces: list[Trace]
    r1: torch.Tensor  # [N] attempt-1 rewards
    r2: torch.Tensor  # [N] attempt-2 rewards
    verify_stats: VerifyStats
    timings: dict[str, float] = field(default_factory=dict)
    """time/generate, time/verify, time/verify_busy of its own (overlapped with the learner's
    step when it was generated one step ahead)."""

    def to_json(self, version: int) -> dict[str, Any]:
        """A checkpointable form. Weight versions are kept as lags behind `version` (the
        driver's at the checkpoint): a run rebuilt after a learner failure may relabel the
        checkpoint's weights with a higher version (`Trainer._continue_from`)."""
        traces = []
        for trace in self.traces:
            row = dataclasses.asdict(trace)
            row["weight_version"] = version - trace.weight_version  # the lag
            traces.append(row)
        return {
            "step": self.step,
            "traces": traces,
            "r1": self.r1.tolist(),
            "r2": self.r2.tolist(),
            "verify_stats": dataclasses.asdict(self.verify_stats),
            "timings": self.timings,
        }

    @classmethod
    def from_json(cls, row: dict[str, Any], version: int) -> Rollout:
        """Inverse of `to_json`, with the lags turned back into versions below `version`."""
        traces = []
        for fields in row["traces"]:
            fields = dict(fields)
            fields["weight_version"] = version - fields["weight_version"]
            traces.append(Trace(**fields))
        return cls(
            step=row["step"],
            traces=traces,
            r1=torch.tensor(row["r1"], dtype=torch.float32),
            r2=torch.tensor(row["r2"], dtype=torch.float32),
            verify_stats=VerifyStats(**row["verify_stats"]),
            timings=dict(row["timings"]),
        )


def stale_traces(
    traces: list[Trace], learner_version: int, max_staleness: int
) -> torch.Tensor:  # [N] bool
    """Traces whose weights lag the learner's by more than `max_staleness` versions."""
    return torch.tensor([learner_version - t.weight_version > max_staleness for t in traces])


class RolloutPipeline:
    """The driver's source of rollouts: `take(k)` returns step k's batch, generated now or,
    one step ahead (`ahead` = train.max_staleness = 1), by the `prefetch(k)` of the step before.

    `launch(k)` draws step k's problems (the sampler advances in the driver thread, in step
    order) and returns the job that generates and verifies them."""

    def __init__(self, launch: Callable[[int], Callable[[], Rollout]], ahead: int) -> None:
        self.launch = launch
        self.ahead = ahead
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-ahead")
        self._pending: tuple[int, Future[Rollout]] | None = None

    def take(self, step: int, timings: dict[str, float]) -> Rollout:
        """Step `step`'s rollout: the prefetched one, else generated now. `time/wait_rollout`
        is how long the driver waited here for a prefetched one."""
        if self._pending is not None:
            pending_step, future = self._pending
            if pending_step != step:
                raise RuntimeError(f"rollout of step {pending_step} in flight at step {step}")
            started = time.perf_counter()
            self._pending = None
            rollout = future.result()
            timings["time/wait_rollout"] = time.perf_counter() - started
            return rollout
        return self.launch(step)()

    def prefetch(self, step: int) -> None:
        """One step ahead: start generating step `step`'s rollout in the background (a no-op
        when synchronous)."""
        if self.ahead > 0:
            job = self.launch(step)
            self._pending = (step, self._executor.submit(job))

    def settle(self, timings: dict[str, float]) -> None:
        """Block until the rollout in flight has finished (before a weight sync writes into
        the engines, an evaluation or a checkpoint uses them); its result, or its error, stays
        for `take`. `time/wait_rollout` is the wait."""
        if self._pending is not None:
            started = time.perf_counter()
            _, future = self._pending
            future.exception()  # waits; an error is raised by `take`
            timings["time/wait_rollout"] = time.perf_counter() - started

    def discard(self) -> None:
        """Wait for the rollout in flight and drop it (recovery rolls the run back)."""
        if self._pending is not None:
            _, future = self._pending
            future.exception()
            self._pending = None

    def state(self, version: int) -> dict[str, Any] | None:
        """The finished rollout in flight, for a checkpoint (None: nothing in flight)."""
        if self._pending is None:
            return None
        _, future = self._pending
        if not future.done():
            raise RuntimeError("a checkpoint needs the rollout in flight settled first")
        return future.result().to_json(version)

    def restore(self, state: dict[str, Any] | None, version: int) -> None:
        """Take up a checkpoint's rollout in flight (replayed, not regenerated)."""
        self.discard()
        if state is not None:
            future: Future[Rollout] = Future()
            future.set_result(Rollout.from_json(state, version))
            self._pending = (state["step"], future)

    def shutdown(self) -> None:
        self.discard()
        self._executor.shutdown(wait=True)
