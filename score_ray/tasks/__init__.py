"""Task sources: turn `TaskConfig` into disjoint train / held-out lists of `Problem`.

Every source (reasoning-gym, MATH-style jsonl, HumanEval, MBPP-style jsonl) produces candidate
problems; the helpers here dedupe them and build the two splits so that no question text (after
normalisation) appears in both. The held-out split is always built first, and training excludes
its questions: evaluation numbers are only meaningful if the model never trained on the
evaluated prompts.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

from score_ray.config import TaskConfig
from score_ray.tasks.base import Problem

__all__ = [
    "Problem",
    "TaskSplits",
    "build_splits",
    "drop_questions",
    "load_task_splits",
    "normalize_question",
    "question_uid",
    "require_nonempty",
]


@dataclass
class TaskSplits:
    train: list[Problem]
    """Training problems, none of whose normalised questions is in `eval`."""
    eval: list[Problem]
    """Held-out evaluation problems."""
    skipped_rows: int = 0
    """Malformed input rows that were skipped (jsonl sources; 0 for generated tasks)."""
    dev: list[Problem] = field(default_factory=list)
    """Dev problems (`task.dev_size`), disjoint from both other splits: for choices."""


def load_task_splits(task: TaskConfig) -> TaskSplits:
    """Build the train and held-out splits for `task`; raise ValueError naming the bad key."""
    # Imported here: reasoning_gym is slow to import and the sources import this module.
    if task.source == "reasoning_gym":
        from score_ray.tasks.reasoning_gym_source import load_reasoning_gym

        return load_reasoning_gym(task)
    if task.source == "math_jsonl":
        from score_ray.tasks.math_jsonl import load_math_jsonl

        return load_math_jsonl(task)
    if task.source == "humaneval":
        from score_ray.tasks.code import load_humaneval

        return load_humaneval(task)
    if task.source == "mbpp_jsonl":
        from score_ray.tasks.code import load_mbpp_jsonl

        return load_mbpp_jsonl(task)
    raise ValueError(f"task.source: unknown task source {task.source!r}")


def normalize_question(text: str) -> str:
    """The key used for dedup and train/eval disjointness.

    NFKC folds look-alike code points (full-width digits, ligatures) and whitespace runs are
    collapsed, so cosmetic variants of one question count as the same question.
    """
    return " ".join(unicodedata.normalize("NFKC", text).split())


def question_uid(prefix: str, question: str) -> str:
    """Stable content-hash id: the same question gets the same uid in every run and process."""
    digest = hashlib.sha256(normalize_question(question).encode("utf-8")).hexdigest()
    return f"{prefix}:{digest[:16]}"


def build_splits(
    eval_candidates: Iterable[Problem],
    train_candidates: Iterable[Problem],
    *,
    eval_size: int,
    train_size: int,
    skipped_rows: int = 0,
    dev_size: int = 0,
) -> TaskSplits:
    """Take up to `eval_size` unique eval problems, then from the training candidates up to
    `dev_size` unique dev problems and up to `train_size` unique train problems, none of whose
    questions is in an earlier split. Dev comes first, so it does not depend on train_size.
    Candidates are consumed lazily, so a generator can produce "extra" items only as long as
    they are needed."""
    eval_problems = _take_unique(eval_candidates, eval_size, exclude=set())
    seen = {normalize_question(p.question) for p in eval_problems}
    train_candidates = iter(train_candidates)
    dev_problems = _take_unique(train_candidates, dev_size, exclude=seen)
    seen |= {normalize_question(p.question) for p in dev_problems}
    train_problems = _take_unique(train_candidates, train_size, exclude=seen)
    return TaskSplits(
        train=train_problems, eval=eval_problems, skipped_rows=skipped_rows, dev=dev_problems
    )


def _take_unique(candidates: Iterable[Problem], limit: int, exclude: set[str]) -> list[Problem]:
    taken: list[Problem] = []
    seen = set(exclude)
    if limit <= 0:
        return taken
    for problem in candidates:
        key = normalize_question(problem.question)
        if key in seen:
            continue
        seen.add(key)
        taken.append(problem)
        if len(taken) >= limit:
            break
    return taken


def require_nonempty(problems: list[Problem], key: str, why: str) -> None:
    """Raise `ValueError("<key>: no usable rows ... <why>")` if `problems` is empty."""
    if not problems:
        raise ValueError(f"{key}: no usable rows ({why})")


def drop_questions(problems: list[Problem], questions: Iterable[str]) -> tuple[list[Problem], int]:
    """`problems` without those whose normalised question is one of `questions` (e.g. the
    prompt's few-shot examples, which must not be evaluated on); and how many were dropped."""
    banned = {normalize_question(q) for q in questions}
    kept = [p for p in problems if normalize_question(p.question) not in banned]
    return kept, len(problems) - len(kept)
