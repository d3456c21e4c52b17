"""A round's SFT examples, sampled and scored by the same actors RL uses.

STaR and Pair-SFT samples come from a `RolloutGroup` (vLLM, the RL sampling settings:
rollout.temperature, attempt 2 at its own temperature, rollout.max_new_tokens) and are scored
by a `VerifierPool`; there is no second sampling or scoring path. Gold examples need neither:
they are the task's reference answers under the first-attempt prompt.
"""

from __future__ import annotations

import logging
from typing import Any

from score_ray.config import Config
from score_ray.prompts import PromptBuilder
from score_ray.sft.examples import (
    SftExample,
    gold_example,
    gold_target_text,
    pair_example,
    pair_first_attempts,
    star_examples,
)
from score_ray.tasks.base import Problem

log = logging.getLogger(__name__)


def star_round(
    cfg: Config, rollout: Any, verifiers: Any, problems: list[Problem], seed: int
) -> tuple[list[SftExample], dict[str, Any]]:
    """Sample S two-attempt traces per problem from the current model, score both attempts,
    keep the successful revisions (attempt 1 wrong, attempt 2 right)."""
    samples = cfg.sft.samples_per_prompt
    traces = rollout.generate(problems, samples, greedy=False, seed=seed)
    by_uid = {p.uid: p for p in problems}
    items = [
        (by_uid[t.problem_uid], text) for t in traces for text in (t.attempt1_text, t.attempt2_text)
    ]
    rewards, stats = verifiers.score(items)
    r1, r2 = rewards[0::2], rewards[1::2]
    examples = star_examples(traces, r1, r2)
    fixes = sum(a < 0.5 <= b for a, b in zip(r1, r2, strict=True))
    breaks = sum(b < 0.5 <= a for a, b in zip(r1, r2, strict=True))
    report = {
        "problems": len(problems),
        "samples": len(traces),
        "attempt1_right": int(sum(r >= 0.5 for r in r1)),
        "attempt2_right": int(sum(r >= 0.5 for r in r2)),
        "fixes": int(fixes),
        "breaks": int(breaks),
        "kept": len(examples),
        "verify": stats.as_metrics(),
    }
    return examples, report


def pair_round(
    cfg: Config,
    rollout: Any,
    verifiers: Any,
    builder: PromptBuilder,
    problems: list[Problem],
    seed: int,
) -> tuple[list[SftExample], dict[str, Any]]:
    """Sample S first attempts per problem from the (base) model, score them, and join a
    wrong and a right one into x1, y_wrong, correction instruction, y_right."""
    samples = cfg.sft.samples_per_prompt
    attempts = rollout.sample_first_attempts(problems, samples, seed)
    items = [(p, a.text) for p, row in zip(problems, attempts, strict=True) for a in row]
    flat, stats = verifiers.score(items)
    rewards = [flat[i * samples : (i + 1) * samples] for i in range(len(problems))]
    truncated = [[a.truncated for a in row] for row in attempts]
    examples = []
    for problem, row, pair in zip(
        problems, attempts, pair_first_attempts(rewards, truncated), strict=True
    ):
        if pair is None:
            continue
        wrong, right = row[pair[0]], row[pair[1]]
        examples.append(
            pair_example(
                problem.uid,
                builder.first_prompt_ids(problem.question),
                wrong.ids,
                builder.bridge_ids(wrong.ids),
                right.ids,
            )
        )
    right_counts = [sum(r >= 0.5 for r in row) for row in rewards]
    report = {
        "problems": len(problems),
        "samples": len(flat),
        "attempt1_right": int(sum(right_counts)),
        "problems_all_wrong": sum(c == 0 for c in right_counts),
        "problems_all_right": sum(c == samples for c in right_counts),
        "kept": len(examples),
        "verify": stats.as_metrics(),
    }
    return examples, report


def gold_round(
    cfg: Config, builder: PromptBuilder, problems: list[Problem]
) -> tuple[list[SftExample], dict[str, Any]]:
    """One example per problem: the first-attempt prompt, then the reference answer written
    as `work = answer` plus the configured answer format, then the end-of-turn token."""
    tokenizer = builder.tokenizer
    end_id = int(tokenizer.eos_token_id)
    examples = [
        gold_example(
            p.uid,
            builder.first_prompt_ids(p.question),
            tokenizer.encode(
                gold_target_text(p, cfg.prompts.answer_format), add_special_tokens=False
            ),
            end_id,
        )
        for p in problems
    ]
    return examples, {"problems": len(problems), "kept": len(examples)}


def fit_context(examples: list[SftExample], max_model_len: int) -> tuple[list[SftExample], int]:
    """Examples that fit in model.max_model_len, and how many did not."""
    kept = [e for e in examples if len(e.token_ids) <= max_model_len]
    return kept, len(examples) - len(kept)
