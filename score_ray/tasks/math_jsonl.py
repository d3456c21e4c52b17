"""Problems from MATH-style jsonl files: one JSON object per line with string fields
`problem` and `answer` (other fields are ignored).

Real-world dumps are messy, so malformed rows are skipped and counted rather than fatal:
invalid UTF-8, invalid JSON, a non-object, a missing / non-string / blank `problem` or
`answer`, text with lone surrogates. Blank lines are not rows and are not counted.

Held-out split: the rows of `task.eval_path`, or, when it is unset, `task.eval_size` rows of
`task.path` chosen by a seeded hash of the question text (deterministic, independent of the
file's order, and stable when rows are appended). Training takes the remaining rows of
`task.path` in file order, minus any question that is also held out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from score_ray.config import TaskConfig
from score_ray.tasks import (
    Problem,
    TaskSplits,
    build_splits,
    normalize_question,
    question_uid,
    require_nonempty,
)

SOURCE = "math_jsonl"


@dataclass
class JsonlRows:
    problems: list[Problem]
    """Well-formed rows, in file order (duplicates included; splitting dedupes)."""
    skipped: int
    """Malformed rows."""


RowParser = Callable[[bytes], "Problem | None"]
"""One raw jsonl line -> a Problem, or None when the row is malformed."""


def load_math_jsonl(task: TaskConfig) -> TaskSplits:
    """MATH-style rows (`problem`, `answer`) from `task.path` / `task.eval_path`."""
    return load_jsonl_splits(task, "math_jsonl", _parse_row)


def load_jsonl_splits(task: TaskConfig, source: str, parse_row: RowParser) -> TaskSplits:
    """Read `task.path` (and `task.eval_path`) with `parse_row` into disjoint held-out and
    training splits; without `task.eval_path`, a seeded-hash subset of `task.path` is
    held out."""
    if task.path is None:
        raise ValueError(f"task.path: required when task.source={source}")
    train_rows = read_jsonl(task.path, "task.path", parse_row)
    skipped = train_rows.skipped
    if task.eval_path is not None:
        eval_rows = read_jsonl(task.eval_path, "task.eval_path", parse_row)
        skipped += eval_rows.skipped
        eval_key, eval_pool = "task.eval_path", eval_rows.problems
    else:
        eval_key, eval_pool = "task.path", train_rows.problems
    splits = build_splits(
        holdout_order(eval_pool, task.seed),
        train_rows.problems,
        eval_size=task.eval_size,
        train_size=task.train_size,
        skipped_rows=skipped,
        dev_size=task.dev_size,
    )
    require_nonempty(splits.eval, eval_key, f"{skipped} malformed rows skipped")
    require_nonempty(
        splits.train,
        "task.path",
        f"{skipped} malformed rows skipped; every well-formed row is held out for "
        "evaluation (add rows, lower task.eval_size, or set task.eval_path)",
    )
    return splits


def holdout_order(problems: list[Problem], seed: int) -> list[Problem]:
    """`problems` ordered by a seeded hash of their question: the held-out split is a prefix."""

    def rank(problem: Problem) -> str:
        text = f"{seed}\0{normalize_question(problem.question)}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    return sorted(problems, key=rank)


def read_jsonl(path: str, key: str, parse_row: RowParser | None = None) -> JsonlRows:
    """Parse every line of `path` with `parse_row` (default: MATH rows); `key` names the
    config field in error messages."""
    parse_row = parse_row or _parse_row
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"{key}: file not found: {path}")
    problems: list[Problem] = []
    skipped = 0
    # Read bytes and decode line by line, so one bad byte costs one row, not the file.
    for raw in file.read_bytes().split(b"\n"):
        if not raw.strip():
            continue
        problem = parse_row(raw)
        if problem is None:
            skipped += 1
        else:
            problems.append(problem)
    return JsonlRows(problems=problems, skipped=skipped)


def _parse_row(raw: bytes) -> Problem | None:
    """The row as a Problem, or None if it is malformed."""
    try:
        row = json.loads(raw.decode("utf-8").lstrip("\ufeff"))  # tolerate a UTF-8 BOM
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(row, dict):
        return None
    question, answer = row.get("problem"), row.get("answer")
    if not isinstance(question, str) or not isinstance(answer, str):
        return None
    question, answer = question.strip(), answer.strip()
    if not question or not answer or not (_encodable(question) and _encodable(answer)):
        return None
    return Problem(
        uid=question_uid(SOURCE, question),
        question=question,
        answer=answer,
        meta={"source": SOURCE},
    )


def _encodable(text: str) -> bool:
    """False for strings with lone surrogates (JSON "\\ud800" escapes): valid JSON, but no
    tokenizer or UTF-8 writer downstream can handle them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
