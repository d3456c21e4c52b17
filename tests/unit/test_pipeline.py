"""The one-step-off rollout pipeline (score_ray/pipeline.py) with stand-in jobs: draw order,
prefetch and settle, checkpoint round trip, and the staleness guard."""

import threading

import pytest
import torch

from score_ray.algo.traces import Trace
from score_ray.pipeline import Rollout, RolloutPipeline, stale_traces
from score_ray.verify.pool import VerifyStats


def _rollout(step: int, version: int) -> Rollout:
    trace = Trace("p", [1], [2], [3], [4], "y1", "y2", [-0.5], [-0.25], weight_version=version)
    return Rollout(step, [trace], torch.tensor([0.0]), torch.tensor([1.0]), VerifyStats())


class _Driver:
    """Records the order in which steps are drawn (launch) and generated (job)."""

    def __init__(self) -> None:
        self.drawn: list[int] = []
        self.generated: list[int] = []
        self.version = 0
        self.release = threading.Event()
        self.release.set()

    def launch(self, step: int):
        self.drawn.append(step)
        version = self.version  # the weights the engines hold when generation starts

        def job() -> Rollout:
            self.release.wait(timeout=10)
            self.generated.append(step)
            return _rollout(step, version)

        return job


def test_synchronous_generates_each_step_when_taken():
    driver = _Driver()
    pipeline = RolloutPipeline(driver.launch, ahead=0)
    pipeline.prefetch(2)  # a no-op when synchronous
    assert driver.drawn == []
    assert pipeline.take(1, {}).step == 1
    assert driver.drawn == driver.generated == [1]
    assert pipeline.state(version=1) is None


def test_one_step_off_generates_the_next_step_during_learn():
    driver = _Driver()
    pipeline = RolloutPipeline(driver.launch, ahead=1)
    timings: dict[str, float] = {}
    first = pipeline.take(1, timings)  # nothing ahead yet: generated now, with version 0
    assert first.traces[0].weight_version == 0 and "time/wait_rollout" not in timings
    driver.release.clear()
    pipeline.prefetch(2)  # drawn now, in order; generated in the background
    assert driver.drawn == [1, 2] and driver.generated == [1]
    driver.release.set()  # "learn" done; settle waits for it before the sync
    pipeline.settle(timings)
    assert driver.generated == [1, 2] and "time/wait_rollout" in timings
    driver.version = 1  # the sync
    second = pipeline.take(2, {})
    assert second.step == 2 and second.traces[0].weight_version == 0  # one version behind
    with pytest.raises(RuntimeError, match="step 3 in flight at step 4"):
        pipeline.prefetch(3)
        pipeline.take(4, {})
    pipeline.shutdown()


def test_checkpoint_replays_the_rollout_ahead_with_relabelled_versions():
    driver = _Driver()
    pipeline = RolloutPipeline(driver.launch, ahead=1)
    driver.version = 4
    pipeline.prefetch(6)
    pipeline.settle({})
    state = pipeline.state(version=5)  # the trace lags the driver's version 5 by 1
    assert state["traces"][0]["weight_version"] == 1
    resumed = RolloutPipeline(driver.launch, ahead=1)
    resumed.restore(state, version=9)  # a rebuilt run relabelled the checkpoint's weights 9
    rollout = resumed.take(6, {})
    assert driver.drawn == [6]  # replayed, not drawn again
    assert rollout.traces[0].weight_version == 8
    assert rollout.traces[0].attempt2_logprobs == [-0.25]
    assert rollout.r2.tolist() == [1.0]


def test_stale_traces_are_those_older_than_the_bound():
    traces = [_rollout(1, version).traces[0] for version in (3, 4, 5)]
    assert stale_traces(traces, learner_version=5, max_staleness=1).tolist() == [
        True,
        False,
        False,
    ]
    assert stale_traces(traces, learner_version=5, max_staleness=0).tolist() == [
        True,
        True,
        False,
    ]
