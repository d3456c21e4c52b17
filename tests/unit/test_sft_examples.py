"""SFT example building and the target-token loss, on cases worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from score_ray.algo.traces import Trace
from score_ray.config import ConfigError, load_config
from score_ray.sft.examples import (
    SftExample,
    batch_plan,
    collate_examples,
    gold_example,
    gold_target_text,
    micro_batches,
    pair_example,
    pair_first_attempts,
    star_examples,
    successful_revisions,
    target_nll_sum,
    target_tokens,
    worked_expression,
    worker_share,
)
from score_ray.tasks.base import Problem


def trace(uid: str, a1: list[int], a2: list[int], truncated2: bool = False) -> Trace:
    return Trace(
        problem_uid=uid,
        prompt_ids=[1, 2],
        attempt1_ids=a1,
        bridge_ids=[9],
        attempt2_ids=a2,
        attempt1_text="",
        attempt2_text="",
        attempt2_truncated=truncated2,
    )


def test_successful_revisions_keep_only_wrong_then_right():
    # traces: (0,0) stays wrong, (0,1) fix, (1,1) stays right, (1,0) break, (0,1) fix
    r1 = [0.0, 0.0, 1.0, 1.0, 0.0]
    r2 = [0.0, 1.0, 1.0, 0.0, 1.0]
    assert successful_revisions(r1, r2) == [1, 4]


def test_star_examples_are_whole_traces_with_attempt2_as_target():
    traces = [trace("a", [3], [4]), trace("b", [5, 6], [7, 8]), trace("c", [3], [4], True)]
    examples = star_examples(traces, [0.0, 0.0, 0.0], [0.0, 1.0, 1.0])
    # trace a: no fix; trace c: a fix cut off at the token budget (no end of turn): skipped
    assert examples == [SftExample("b", [1, 2, 5, 6, 9], [7, 8])]


def test_pair_first_attempts_picks_the_first_wrong_and_first_right():
    rewards = [
        [1.0, 0.0, 1.0, 0.0],  # wrong first at 1, right first at 0
        [0.0, 0.0],  # all wrong: no pair
        [1.0, 1.0],  # all right: no pair
        [1.0, 0.0, 1.0],  # right at 0 was cut off: the next right one, 2
    ]
    truncated = [[False] * 4, [False] * 2, [False] * 2, [True, False, False]]
    assert pair_first_attempts(rewards, truncated) == [(1, 0), None, None, (1, 2)]
    assert pair_first_attempts([[0.0, 1.0]]) == [(0, 1)]


def test_pair_example_joins_wrong_bridge_right():
    example = pair_example("u", [1, 2], [5, 6], [9, 9], [7])
    assert example.token_ids == [1, 2, 5, 6, 9, 9, 7]
    assert example.target_ids == [7]


def test_gold_target_uses_the_expression_or_restates_the_question():
    with_expression = Problem(
        "u", "Calculate 5 - 33.", "-28", meta={"entry": {"metadata": {"expression": "5 - 33"}}}
    )
    assert gold_target_text(with_expression, "answer_tag") == "5 - 33 = -28\n<answer>-28</answer>"
    plain = Problem("v", "What is 2 + 2?", " 4 ")
    assert worked_expression(plain) == "What is 2 + 2"
    assert gold_target_text(plain, "boxed") == "What is 2 + 2 = \\boxed{4}"
    with pytest.raises(ValueError, match="answer_format"):
        gold_target_text(plain, "code")
    assert gold_example("v", [1], [5, 6], 2).target_ids == [5, 6, 2]


def test_loss_mask_covers_target_tokens_only():
    examples = [SftExample("a", [1, 2], [3]), SftExample("b", [4], [5, 6, 7])]
    batch = collate_examples(examples, pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 0], [4, 5, 6, 7]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch.loss_mask.tolist() == [[0, 0, 1, 0], [0, 1, 1, 1]]
    assert target_tokens(examples, [0, 1]) == 4


def test_target_nll_sums_the_target_tokens_log_probs():
    # vocabulary of 2; the sequence [0, 1, 1] with target [1, 1] (context [0]).
    # position 0 predicts token 1 with logits (0, 0): p = 1/2;
    # position 1 predicts token 1 with logits (0, ln 3): p = 3/4;
    # position 2 predicts nothing (its logits are ignored).
    batch = collate_examples([SftExample("a", [0], [1, 1])], pad_id=0)
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)], [5.0, -5.0]]])
    expected = -(math.log(0.5) + math.log(0.75))
    assert target_nll_sum(logits, batch).item() == pytest.approx(expected)
    # the context token's own prediction (position -1) does not exist; a context-only
    # position never counts: put a huge wrong logit where the mask is 0
    batch2 = collate_examples([SftExample("a", [0, 0], [1])], pad_id=0)
    logits2 = torch.tensor([[[0.0, 100.0], [0.0, 0.0], [0.0, 0.0]]])
    assert target_nll_sum(logits2, batch2).item() == pytest.approx(-math.log(0.5))


def test_batch_plan_is_seeded_covers_each_epoch_and_splits_over_workers():
    plan = batch_plan(5, batch_size=2, epochs=2, seed=3)
    assert [len(b) for b in plan] == [2, 2, 1, 2, 2, 1]
    assert sorted(i for b in plan[:3] for i in b) == [0, 1, 2, 3, 4]
    assert sorted(i for b in plan[3:] for i in b) == [0, 1, 2, 3, 4]
    assert plan == batch_plan(5, batch_size=2, epochs=2, seed=3)
    assert worker_share([7, 8, 9], 0, 2) == [7, 9]
    assert worker_share([7, 8, 9], 1, 2) == [8]
    assert micro_batches([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]


def test_sft_config_errors_name_the_key():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["sft.method=dpo", "sft.lr=0", "sft.batch_size=1"])
    text = str(err.value)
    assert "sft.method" in text and "sft.lr" in text and "sft.batch_size" in text
    with pytest.raises(ConfigError, match=r"sft\.samples_per_prompt"):
        load_config(None, ["sft.method=pair_sft", "sft.samples_per_prompt=1"])
    with pytest.raises(ConfigError, match=r"sft\.rounds"):
        load_config(None, ["sft.method=gold", "sft.rounds=2"])
