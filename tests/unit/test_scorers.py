"""Answer extraction and binary scoring, including hostile model output."""

from __future__ import annotations

import json
import threading
import time

import pytest

from score_ray.config import TaskConfig
from score_ray.tasks import Problem, load_task_splits
from score_ray.verify import extract_answer, score_completion

HOSTILE = [
    "",
    "\x00\x01\x02",
    "\ud800 lone surrogate",
    "\u202e\u200b\ufeff RTL and zero-width",
    "😀" * 1000,
    "}}}{{{" * 1000,
    "\\boxed{" * 5000,
    "<answer>" * 5000,
    "</answer><answer></answer>",
    "<answer>\\frac{1}{0}</answer>",
    "<answer>__import__('os').getcwd()</answer>",
    "<answer>" + "9" * 5000 + "</answer>",
    "<answer>" + "x" * 2_000_000,
    "\\boxed{" + "(" * 3000 + "}",
]


# --- extract_answer -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("So <answer> 42 </answer>", "42"),
        ("<answer>1</answer> then <answer>2</answer> finally <answer>3</answer>", "3"),
        ("Format: <answer>ANSWER</answer>. Mine: <ANSWER>7</Answer>", "7"),
        # a cut-off last answer earns nothing, and does not fall back to an earlier one
        ("<answer>1</answer> and the truncated last one <answer> 5 ", None),
        ("12 + 0 = 12\n<answer>1", None),
        ("<answer>multi\nline</answer>", "multi\nline"),
        ("no tag here: 42", None),
        ("<answer>   </answer>", None),
        ("<answer></answer>", None),
        ("</answer> 4 <answer", None),
    ],
)
def test_extract_answer_tag(text, expected):
    assert extract_answer(text, "answer_tag") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is \\boxed{42}.", "42"),
        ("\\boxed{1} no wait \\boxed{2}", "2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed {x^{2}+{y}}", "x^{2}+{y}"),
        ("\\boxed{3} then an unclosed \\boxed{4", None),
        ("stray } and { around \\boxed{5} {", "5"),
        ("\\boxed{\\boxed{6}}", "\\boxed{6}"),
        ("no box: 42", None),
        ("\\boxed{", None),
        ("\\boxed{}", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_answer(text, "boxed") == expected


def test_unknown_answer_format_raises():
    with pytest.raises(ValueError, match="answer_format"):
        extract_answer("<answer>1</answer>", "json")


@pytest.mark.parametrize("answer_format", ["answer_tag", "boxed"])
def test_extraction_is_linear_on_adversarial_text(answer_format):
    # 2.8 M characters: a linear scan takes well under a second, a quadratic one (a
    # backtracking regex) hours; the bound is loose so that a loaded machine cannot fail it.
    text = ("<answer>\\boxed{{" * 200_000) + "}"
    start = time.perf_counter()
    extract_answer(text, answer_format)
    assert time.perf_counter() - start < 30.0


# --- reasoning-gym ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def arithmetic() -> Problem:
    return load_task_splits(TaskConfig(train_size=1, eval_size=1)).eval[0]


def rescored_elsewhere(problem: Problem) -> Problem:
    """The problem as another process sees it: meta went through JSON."""
    return Problem(
        problem.uid, problem.question, problem.answer, json.loads(json.dumps(problem.meta))
    )


def test_reasoning_gym_correct_and_wrong(arithmetic):
    gold = arithmetic.answer
    assert score_completion(arithmetic, f"work...\n<answer>{gold}</answer>", "answer_tag") == 1.0
    assert score_completion(arithmetic, f"\\boxed{{{gold}}}", "boxed") == 1.0
    assert score_completion(arithmetic, f"<answer>{int(gold) + 1}</answer>", "answer_tag") == 0.0
    # Partial credit from reasoning-gym (gold inside a longer answer) is not a success.
    assert score_completion(arithmetic, f"<answer>{gold} apples</answer>", "answer_tag") == 0.0
    assert score_completion(arithmetic, f"the answer is {gold}", "answer_tag") == 0.0


def test_reasoning_gym_rescoring_from_json_meta_needs_exact_types():
    # rearc compares the answer grid with a tuple-of-tuples in the entry metadata.
    problem = rescored_elsewhere(
        load_task_splits(TaskConfig(name="rearc", train_size=1, eval_size=1)).eval[0]
    )
    assert score_completion(problem, f"<answer>{problem.answer}</answer>", "answer_tag") == 1.0
    assert score_completion(problem, "<answer>1 2\n3 4</answer>", "answer_tag") == 0.0


@pytest.mark.parametrize("completion", HOSTILE)
@pytest.mark.parametrize("answer_format", ["answer_tag", "boxed"])
def test_reasoning_gym_hostile_output_scores_zero(arithmetic, completion, answer_format):
    assert score_completion(rescored_elsewhere(arithmetic), completion, answer_format) == 0.0


# --- MATH-style ---------------------------------------------------------------------------


def math_problem(answer: str) -> Problem:
    return Problem(uid="m", question="q", answer=answer, meta={"source": "math_jsonl"})


@pytest.mark.parametrize(
    ("gold", "predicted", "expected"),
    [
        ("\\frac{1}{2}", "1/2", 1.0),
        ("\\frac{1}{2}", "0.5", 1.0),
        ("\\frac{1}{2}", "\\dfrac12", 1.0),
        ("\\frac{1}{2}", "1/3", 0.0),
        ("\\sqrt{2}", "2^{1/2}", 1.0),
        ("x^2+1", "1+x^2", 1.0),
        ("\\{1,2\\}", "\\{2,1\\}", 1.0),
        ("3", "4", 0.0),
        ("3", "three", 0.0),
    ],
)
def test_math_equivalence(gold, predicted, expected):
    problem = math_problem(gold)
    assert score_completion(problem, f"<answer>{predicted}</answer>", "answer_tag") == expected
    assert score_completion(problem, f"so \\boxed{{{predicted}}}.", "boxed") == expected


def test_math_answer_outside_the_format_scores_zero():
    assert score_completion(math_problem("2"), "the answer is 2", "answer_tag") == 0.0
    assert score_completion(math_problem("2"), "<answer>2</answer>", "boxed") == 0.0


@pytest.mark.parametrize("completion", HOSTILE)
@pytest.mark.parametrize("answer_format", ["answer_tag", "boxed"])
def test_math_hostile_output_scores_zero(completion, answer_format):
    assert score_completion(math_problem("\\frac{1}{2}"), completion, answer_format) == 0.0


def test_math_scoring_works_off_the_main_thread():
    # With math-verify's default signal timeouts this raises (and would score 0) in a thread.
    results: list[float] = []
    worker = threading.Thread(
        target=lambda: results.append(
            score_completion(math_problem("\\frac{1}{2}"), "<answer>0.5</answer>", "answer_tag")
        )
    )
    worker.start()
    worker.join()
    assert results == [1.0]


def test_unknown_source_in_meta_raises():
    problem = Problem(uid="u", question="q", answer="1", meta={"source": "mystery"})
    with pytest.raises(ValueError, match="mystery"):
        score_completion(problem, "<answer>1</answer>", "answer_tag")
