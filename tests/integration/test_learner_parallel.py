"""Data-parallel DeepSpeed learners: world size 2 (ZeRO-3) matches world size 1 (ZeRO-2).

The same fixed batch and advantages go to both groups; one update must give
the same loss, gradient norm and post-update log-probs within tolerance. The prompts share
a prefix, which the ZeRO-3 group runs once per micro-batch (`learner.share_prompt_prefix`)
and the ZeRO-2 group runs per trace. The ZeRO-3 group's reference model is a ZeRO-3 engine
of its own: each rank holds half of it, and the KL term it feeds into the loss matches.
"""

from __future__ import annotations

import random

import torch

from score_ray.algo import Trace, collate_traces
from score_ray.learner.actor import MIN_SHARED_PREFIX
from score_ray.learner.group import LearnerGroup
from tests.integration.conftest import max_abs_diff, tiny_config

# fp32 on CPU; reduction order differs between 1 and 2 ranks.
REL_TOL = 1e-4
LOGPROB_TOL = 1e-4


def _fixed_traces(count: int, vocab: int = 49152) -> list[Trace]:
    rng = random.Random(0)

    def ids(n: int) -> list[int]:
        return [rng.randrange(vocab) for _ in range(n)]

    shared = ids(MIN_SHARED_PREFIX + 4)  # a system prompt every trace starts with
    return [
        Trace(f"p{i}", shared + ids(6 + i % 3), ids(5 + i % 2), ids(3), ids(4 + i % 4), "a", "b")
        for i in range(count)
    ]


def _one_update(cfg, model_path, batch, adv1, adv2, probe):
    group = LearnerGroup(cfg, model_path)
    try:
        stats = group.train_step(batch, adv1, adv2, stage=1)
        return stats, group.sequence_logprobs(probe), group.memory_report()
    finally:
        group.shutdown()


def test_world_size_two_matches_one(ray_local, tiny_model_path, tmp_path):
    traces = _fixed_traces(8)
    batch = collate_traces(traces, pad_id=0)
    adv1 = torch.linspace(-1.0, 1.0, 8)
    adv2 = torch.tensor([1.0, -1.0] * 4)
    probe = [traces[0].token_ids, traces[5].token_ids]
    common = ("train.prompts_per_step=4", "train.samples_per_prompt=2", "learner.lr=1e-3")

    single_cfg = tiny_config(
        tmp_path,
        *common,
        "learner.world_size=1",
        "learner.zero_stage=2",
        "learner.micro_batch_size=4",
        "learner.share_prompt_prefix=false",
    )
    double_cfg = tiny_config(
        tmp_path,
        *common,
        "learner.world_size=2",
        "learner.zero_stage=3",
        "learner.micro_batch_size=2",
    )
    single, single_lp, single_mem = _one_update(
        single_cfg, tiny_model_path, batch, adv1, adv2, probe
    )
    double, double_lp, double_mem = _one_update(
        double_cfg, tiny_model_path, batch, adv1, adv2, probe
    )

    assert abs(single["loss"] - double["loss"]) <= REL_TOL * max(1.0, abs(single["loss"]))
    assert abs(single["grad_norm"] - double["grad_norm"]) <= REL_TOL * single["grad_norm"]
    assert single["grad_norm"] > 0
    assert max_abs_diff(single_lp, double_lp) < LOGPROB_TOL
    # Stage I's KL pin on attempt 1 is 0 before the update (policy = reference); a wrong
    # sharded reference would make it, and the loss above, differ.
    assert abs(single["kl/attempt1"] - double["kl/attempt1"]) < REL_TOL
    whole = single_mem[0]["reference_bytes"]
    assert [m["reference_placement"] for m in single_mem + double_mem] == [
        "resident",
        "sharded",
        "sharded",
    ]
    for rank in double_mem:  # half of the large tensors; ZeRO-3 keeps small ones whole
        assert whole / 2 <= rank["reference_bytes"] <= 0.75 * whole, (rank, whole)
