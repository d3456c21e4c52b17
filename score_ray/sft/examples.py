"""Which self-generated samples become SFT examples, and the token masks they train under.

An SFT example is one token sequence split in two: a context the model is conditioned on
(no loss) and a target it learns to produce (the loss). The three methods differ only in
how they build it (paper, Section 4 and Table 4; docs/sft.md):

    star       context = x1 + y1 + bridge        target = y2     (y1 wrong, y2 right)
    pair_sft   context = x1 + y_wrong + bridge   target = y_right  (two first attempts)
    gold       context = x1                      target = "work = answer" + answer format

`bridge` is the chat template's turn end, correction instruction and next assistant header
(score_ray.prompts), so a STaR or Pair-SFT example is exactly a two-attempt trace as the
rollout workers lay it out. Everything here is pure: no Ray, no model, no tokenizer.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import torch

from score_ray.algo.traces import Trace
from score_ray.tasks.base import Problem

RIGHT = 0.5
"""Rewards are 0 or 1; at or above this an attempt counts as right."""


@dataclass
class SftExample:
    """One training sequence: `context_ids` (no loss) followed by `target_ids` (loss)."""

    problem_uid: str
    context_ids: list[int]
    target_ids: list[int]

    @property
    def token_ids(self) -> list[int]:
        return self.context_ids + self.target_ids

    def to_json(self) -> dict[str, Any]:
        return {"uid": self.problem_uid, "context": self.context_ids, "target": self.target_ids}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> SftExample:
        return cls(row["uid"], list(row["context"]), list(row["target"]))


# -- STaR: successful revisions ---------------------------------------------------------------


def successful_revisions(r1: list[float], r2: list[float]) -> list[int]:
    """Indices of traces whose attempt 1 was wrong and attempt 2 right (the STaR filter)."""
    return [i for i, (a, b) in enumerate(zip(r1, r2, strict=True)) if a < RIGHT and b >= RIGHT]


def star_examples(traces: list[Trace], r1: list[float], r2: list[float]) -> list[SftExample]:
    """One example per successful revision: the whole trace, loss on attempt 2 only.

    A revision cut off at the token budget is skipped even if scored right: its target has no
    end-of-turn token, and training on it would teach the model not to stop."""
    return [
        SftExample(
            traces[i].problem_uid,
            traces[i].prompt_ids + traces[i].attempt1_ids + traces[i].bridge_ids,
            list(traces[i].attempt2_ids),
        )
        for i in successful_revisions(r1, r2)
        if not traces[i].attempt2_truncated
    ]


# -- Pair-SFT: a wrong and a right first attempt ----------------------------------------------


def pair_first_attempts(
    rewards: list[list[float]], truncated: list[list[bool]] | None = None
) -> list[tuple[int, int] | None]:
    """Per problem, (index of a wrong first attempt, index of a right one), or None when its
    samples are all wrong or all right. The first of each in sample order: the samples are
    i.i.d., so that is a random pick, and it is reproducible. A right attempt cut off at the
    token budget cannot be a target (see `star_examples`)."""
    pairs: list[tuple[int, int] | None] = []
    for index, row in enumerate(rewards):
        cut = truncated[index] if truncated is not None else [False] * len(row)
        wrong = next((j for j, r in enumerate(row) if r < RIGHT), None)
        right = next((j for j, r in enumerate(row) if r >= RIGHT and not cut[j]), None)
        pairs.append(None if wrong is None or right is None else (wrong, right))
    return pairs


def pair_example(
    problem_uid: str,
    prompt_ids: list[int],
    wrong_ids: list[int],
    bridge_ids: list[int],
    right_ids: list[int],
) -> SftExample:
    """x1, y_wrong, correction instruction, y_right as one trace; loss on y_right only."""
    return SftExample(problem_uid, prompt_ids + wrong_ids + bridge_ids, list(right_ids))


# -- gold: the task's reference answers ------------------------------------------------------


def worked_expression(problem: Problem) -> str:
    """What the gold target writes before `= answer`: the task's own expression when it has
    one (reasoning-gym arithmetic keeps it in its metadata), else the question restated
    without its trailing punctuation or `=`."""
    metadata = (problem.meta.get("entry") or {}).get("metadata") or {}
    expression = metadata.get("expression")
    if isinstance(expression, str) and expression.strip():
        return expression.strip()
    return problem.question.strip().rstrip(".?!:=").strip()


def gold_target_text(problem: Problem, answer_format: str) -> str:
    """The gold response, in the style of the demo's few-shot examples:
    `5 - 33 = -28\\n<answer>-28</answer>` (answer_tag) or `... = \\boxed{-28}` (boxed)."""
    answer = problem.answer.strip()
    work = worked_expression(problem)
    if answer_format == "answer_tag":
        return f"{work} = {answer}\n<answer>{answer}</answer>"
    if answer_format == "boxed":
        return f"{work} = \\boxed{{{answer}}}"
    raise ValueError(
        f"sft.method=gold: no gold target for prompts.answer_format={answer_format!r} "
        "(answer_tag and boxed only)"
    )


def gold_example(
    problem_uid: str, prompt_ids: list[int], target_text_ids: list[int], end_id: int
) -> SftExample:
    """x1 then the gold response closed by the end-of-turn token, so the model learns to
    stop as its sampled attempts do."""
    return SftExample(problem_uid, list(prompt_ids), [*target_text_ids, end_id])


# -- batches and the target-token loss -------------------------------------------------------


@dataclass
class SftBatch:
    """Right-padded examples. B = examples, T = longest sequence."""

    input_ids: torch.Tensor  # [B, T] long, padded with pad_id
    attention_mask: torch.Tensor  # [B, T] long, 1 on real tokens
    loss_mask: torch.Tensor  # [B, T] float, 1 on target tokens


def collate_examples(examples: list[SftExample], pad_id: int) -> SftBatch:
    """Pad to one length; mark the target tokens (the only ones with a loss)."""
    longest = max(len(e.token_ids) for e in examples)
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    loss_mask = torch.zeros((len(examples), longest))
    for row, example in enumerate(examples):
        ids = example.token_ids
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
        loss_mask[row, len(example.context_ids) : len(ids)] = 1.0
    return SftBatch(input_ids, attention_mask, loss_mask)


def target_nll_sum(logits: torch.Tensor, batch: SftBatch) -> torch.Tensor:
    """Sum over target tokens of -log p(token | everything before it).

    logits: [B, T, V] from the model on batch.input_ids. Position t predicts token t + 1, so
    the mask is read one position later. Summed, not averaged: the caller divides by the
    global batch's target-token count, so every target token weighs the same however the
    batch is split over workers and micro-batches."""
    predicted = logits[:, :-1].float()  # [B, T-1, V]
    tokens = batch.input_ids[:, 1:]  # [B, T-1]
    mask = batch.loss_mask[:, 1:]  # [B, T-1]
    logp = torch.log_softmax(predicted, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return -(logp * mask).sum()


def batch_plan(num_examples: int, batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Global batches of example indices: each epoch a fresh seeded shuffle cut into
    ceil(N / batch_size) batches (the last may be short). Every worker computes the same
    plan, so a resumed run knows which batches it has done from the step number alone."""
    plan: list[list[int]] = []
    per_epoch = math.ceil(num_examples / batch_size)
    for epoch in range(epochs):
        order = list(range(num_examples))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        plan += [order[i * batch_size : (i + 1) * batch_size] for i in range(per_epoch)]
    return plan


def worker_share(batch: list[int], rank: int, world_size: int) -> list[int]:
    """The examples of a global batch that worker `rank` computes (round robin)."""
    return batch[rank::world_size]


def micro_batches(indices: list[int], size: int) -> list[list[int]]:
    """`indices` cut into forward passes of at most `size` examples."""
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def target_tokens(examples: list[SftExample], indices: list[int]) -> int:
    """Target tokens that carry a loss in these examples (the first token of a sequence
    never does: nothing predicts it)."""
    return sum(
        len(examples[i].target_ids) - (1 if not examples[i].context_ids else 0) for i in indices
    )
