"""Code tasks: HumanEval and MBPP-style jsonl loading, code extraction, sandboxed scoring."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from score_ray.config import ConfigError, TaskConfig, load_config
from score_ray.tasks import Problem, load_task_splits, normalize_question
from score_ray.tasks.code import HUMANEVAL_SIZE, build_check, read_mbpp_jsonl
from score_ray.verify import extract_answer, score_completion
from score_ray.verify.scorers import extract_code

CONF = Path(__file__).resolve().parents[2] / "conf"


def fenced(code: str, language: str = "python") -> str:
    return f"Here is my solution.\n\n```{language}\n{code}\n```\n"


def humaneval(**overrides) -> TaskConfig:
    return TaskConfig(**{"source": "humaneval", "train_size": 1000, "eval_size": 64, **overrides})


@pytest.fixture(scope="module")
def humaneval_problems() -> dict[str, Problem]:
    splits = load_task_splits(humaneval())
    return {p.meta["task_id"]: p for p in splits.train + splits.eval}


# --- HumanEval loading --------------------------------------------------------------------


def test_humaneval_is_bundled_and_split_disjointly():
    splits = load_task_splits(humaneval())
    assert (len(splits.eval), len(splits.train), splits.skipped_rows) == (64, 100, 0)
    eval_keys = {normalize_question(p.question) for p in splits.eval}
    assert not eval_keys & {normalize_question(p.question) for p in splits.train}
    uids = [p.uid for p in splits.train + splits.eval]
    assert len(set(uids)) == HUMANEVAL_SIZE
    again = load_task_splits(humaneval())
    assert [p.uid for p in again.eval] == [p.uid for p in splits.eval]  # deterministic
    other_seed = load_task_splits(humaneval(seed=1))
    assert {p.uid for p in other_seed.eval} != {p.uid for p in splits.eval}
    meta = splits.eval[0].meta
    assert json.loads(json.dumps(meta)) == meta
    assert {"source", "prompt", "test", "entry_point"} <= set(meta)


def test_humaneval_train_size_caps_and_eval_must_leave_training():
    assert len(load_task_splits(humaneval(train_size=10)).train) == 10
    with pytest.raises(ValueError, match=r"task\.eval_size"):
        load_task_splits(humaneval(eval_size=HUMANEVAL_SIZE))


def test_every_canonical_humaneval_solution_passes(humaneval_problems):
    # The program assembly is right for all 164 problems (helpers, imports, check()).
    failed = [
        task_id
        for task_id, problem in humaneval_problems.items()
        if score_completion(problem, fenced(problem.answer), "code") != 1.0
    ]
    assert failed == []


def test_every_humaneval_problem_fails_a_wrong_answer(humaneval_problems):
    # The other half of keeping the verdicts: the tests still catch a wrong function on every
    # problem now that they call it through a proxy.
    passed = [
        task_id
        for task_id, problem in humaneval_problems.items()
        if score_completion(
            problem,
            fenced(f"def {problem.meta['entry_point']}(*args, **kwargs):\n    return None"),
            "code",
        )
        != 0.0
    ]
    assert passed == []


@pytest.mark.parametrize("task_id", ["HumanEval/0", "HumanEval/10", "HumanEval/38"])
def test_humaneval_full_function_passes_and_stub_or_wrong_fails(humaneval_problems, task_id):
    problem = humaneval_problems[task_id]
    full = problem.meta["prompt"] + problem.answer
    assert score_completion(problem, fenced(full), "code") == 1.0
    assert score_completion(problem, fenced(problem.meta["prompt"]), "code") == 0.0
    wrong = f"def {problem.meta['entry_point']}(*args):\n    return None\n"
    assert score_completion(problem, fenced(wrong), "code") == 0.0


def test_rewriting_only_the_target_keeps_the_prompts_helpers(humaneval_problems):
    # HumanEval/10's make_palindrome calls is_palindrome, defined only in the prompt.
    problem = humaneval_problems["HumanEval/10"]
    only_target = (
        "def make_palindrome(string: str) -> str:\n"
        "    for i in range(len(string) + 1):\n"
        "        if is_palindrome(string[i:]):\n"
        "            return string + string[:i][::-1]\n"
    )
    assert score_completion(problem, fenced(only_target), "code") == 1.0


# --- extraction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("```python\nx = 1\n```", "x = 1"),
        ("```py\na\n```\ntext\n```python\nb\n```", "b"),
        ("```python\nkeep\n```\n```\nuntagged\n```", "keep"),
        ("```\nonly untagged\n```", "only untagged"),
        ("```python\ncode\n```\n```text\noutput 3\n```", "code"),
        ("```output\n3\n```", None),
        ("```python\n    return 1\n```", "    return 1"),
        ("```python\n\n\nx = 1\n\n```", "x = 1"),
        ("```python\nx = 1\r\ny = 2\r\n```", "x = 1\ny = 2"),
        ("```python\nfirst\n```\n```python\ntruncated at the bud", "truncated at the bud"),
        ("  ```Python3 title\n  indented fence\n  ```", "  indented fence"),
        ("def f():\n    return 1\n", None),
        ("```python\n   \n```", None),
        ("", None),
    ],
)
def test_extract_code(text, expected):
    assert extract_code(text) == expected
    assert extract_answer(text, "code") == expected


def test_code_extraction_is_linear_on_adversarial_text():
    text = "```python\n" * 200_000 + "```" * 200_000
    started = time.perf_counter()
    extract_code(text)
    assert time.perf_counter() - started < 2.0


# --- hostile completions ------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion",
    [
        "",
        "\x00\ud800",
        "no code at all, just: all tests passed",
        "```python\n" + "x" * 60_000 + "\n```",
        fenced("print('all tests passed')"),
        fenced("import os\nos._exit(0)"),
        fenced("import sys\nprint('OK')\nsys.exit(0)"),
        fenced("def check(candidate):\n    pass\n"),
        fenced("import builtins\nbuiltins.AssertionError = type('E', (Exception,), {})"),
        fenced("while True:\n    pass"),
        fenced("import posix\nposix.kill(1, 9)"),
        fenced("x = bytearray(10 ** 11)"),
        fenced("def has_close_elements(numbers, threshold):\n    raise SystemExit(0)"),
    ],
    ids=[
        "empty",
        "garbage",
        "prose",
        "too-long",
        "print-pass",
        "os-exit",
        "sys-exit",
        "redefine-check",
        "patch-assert",
        "loop",
        "kill",
        "memory",
        "exit-in-candidate",
    ],
)
def test_hostile_completions_score_zero(humaneval_problems, completion):
    problem = humaneval_problems["HumanEval/0"]
    assert score_completion(problem, completion, "code", sandbox_timeout_s=1.0) == 0.0


def test_always_equal_objects_do_not_pass(humaneval_problems):
    # The tests run in their own process and receive only plain data: an object whose
    # __eq__ always says True never reaches `assert candidate(x) == y`.
    hack = (
        "class Anything:\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "def has_close_elements(numbers, threshold):\n"
        "    return Anything()\n"
    )
    assert score_completion(humaneval_problems["HumanEval/0"], fenced(hack), "code") == 0.0


def test_code_problems_need_the_code_answer_format(humaneval_problems):
    with pytest.raises(ValueError, match="answer_format"):
        score_completion(humaneval_problems["HumanEval/0"], "```python\n```", "answer_tag")


def test_sandbox_timeout_is_applied(humaneval_problems):
    started = time.monotonic()
    slow = fenced("import time\ntime.sleep(30)")
    problem = humaneval_problems["HumanEval/0"]
    assert score_completion(problem, slow, "code", sandbox_timeout_s=0.5) == 0.0
    assert time.monotonic() - started < 3.0


# --- MBPP-style jsonl ---------------------------------------------------------------------

MBPP_ROWS = [
    {
        "task_id": 1,
        "text": "Write a function to add two numbers.",
        "code": "def add(a, b):\n    return a + b",
        "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"],
        "test_setup_code": "",
    },
    {
        "text": "Write a function to compute the hypotenuse.",
        "code": "def hyp(a, b):\n    return (a * a + b * b) ** 0.5",
        "test_list": ["assert math.isclose(hyp(3, 4), 5.0)"],
        "test_setup_code": "import math",
    },
    {
        "text": "Write a function to reverse a string.",
        "code": "def rev(s):\n    return s[::-1]",
        "test_list": ["assert rev('ab') == 'ba'"],
    },
    {"text": "Write a function to square a number.", "test_list": ["assert sq(3) == 9"]},
]
MALFORMED = [
    b"{not json",
    b"[1, 2]",
    json.dumps({"text": "no tests"}).encode(),
    json.dumps({"text": "empty tests", "test_list": []}).encode(),
    json.dumps({"text": "bad test", "test_list": [3]}).encode(),
    json.dumps({"text": "", "test_list": ["assert True"]}).encode(),
    json.dumps({"text": "bad setup", "test_list": ["assert True"], "test_setup_code": 1}).encode(),
    json.dumps({"text": "\ud800", "test_list": ["assert True"]}).encode(),
    b"\xff\xfe invalid utf-8",
]


def write_jsonl(path: Path, rows: list[dict], extra: list[bytes] = ()) -> Path:
    lines = [json.dumps(row).encode() for row in rows] + list(extra)
    path.write_bytes(b"\n".join(lines) + b"\n\n")
    return path


def mbpp(path: Path, **overrides) -> TaskConfig:
    return TaskConfig(
        **{"source": "mbpp_jsonl", "path": str(path), "train_size": 10, "eval_size": 1, **overrides}
    )


def test_mbpp_rows_load_and_malformed_rows_are_counted(tmp_path):
    path = write_jsonl(tmp_path / "mbpp.jsonl", MBPP_ROWS, MALFORMED)
    splits = load_task_splits(mbpp(path))
    assert (len(splits.eval), len(splits.train), splits.skipped_rows) == (1, 3, len(MALFORMED))
    problem = splits.eval[0]
    assert "Your code should pass these tests:" in problem.question
    assert all(test in problem.question for test in problem.meta["tests"])
    assert json.loads(json.dumps(problem.meta)) == problem.meta


def test_mbpp_eval_path_and_missing_file(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", MBPP_ROWS[:3])
    held = write_jsonl(tmp_path / "eval.jsonl", MBPP_ROWS[2:])
    splits = load_task_splits(mbpp(train, eval_path=str(held), eval_size=5))
    assert len(splits.eval) == 2 and len(splits.train) == 2  # the shared row stays held out
    with pytest.raises(ValueError, match=r"task\.path"):
        load_task_splits(mbpp(tmp_path / "missing.jsonl"))


def test_mbpp_scoring_uses_setup_code_and_tests(tmp_path):
    path = write_jsonl(tmp_path / "mbpp.jsonl", MBPP_ROWS[:3])
    rows = read_mbpp_jsonl(str(path), "task.path").problems
    by_text = {p.question.split("\n")[0].split(" ")[-1].rstrip("."): p for p in rows}
    for problem in by_text.values():
        assert score_completion(problem, fenced(problem.answer), "code") == 1.0
    hyp = by_text["hypotenuse"]
    check = build_check(hyp, "pass")
    assert "import math" in check.setup and "import math" in check.candidate
    assert score_completion(hyp, fenced("def hyp(a, b):\n    return a + b"), "code") == 0.0
    add = by_text["numbers"]
    assert score_completion(add, fenced("def add(a, b):\n    return 3"), "code") == 0.0


# MBPP rows as the dataset has them (tasks 2, 4, 88 and two of their kind): tuples built
# from sets, heapq, collections.Counter, sets, floats that rely on the setup code's import.
REAL_MBPP = [
    (
        "def similar_elements(test_tup1, test_tup2):\n  res = tuple(set(test_tup1) & "
        "set(test_tup2))\n  return (res) ",
        ["assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
         "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)"],
        "",
    ),
    (
        "import heapq as hq\ndef heap_queue_largest(nums,n):\n  largest_nums = hq.nlargest(n, "
        "nums)\n  return largest_nums",
        ["assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65]"],
        "",
    ),
    (
        "import collections\ndef freq_count(list1):\n  freq_count= collections.Counter(list1)"
        "\n  return freq_count",
        ["assert freq_count([10,10,10,10,20,20,20,20,40,40,50,50,30])==({10: 4, 20: 4, 40: 2, "
         "50: 2, 30: 1})"],
        "",
    ),
    ("def union(a, b):\n  return set(a) | set(b)", ["assert union([1, 2], [2]) == {1, 2}"], ""),
    (
        "def circle_area(r):\n  return math.pi * r * r",
        ["assert math.isclose(circle_area(2), 12.566370614359172)"],
        "import math",
    ),
]  # fmt: skip


@pytest.mark.parametrize("row", REAL_MBPP, ids=lambda row: row[0].split("(")[0].split()[-1])
def test_mbpp_rows_keep_their_verdicts(tmp_path, row):
    code, tests, setup = row
    path = write_jsonl(
        tmp_path / "mbpp.jsonl",
        [{"text": "Solve it.", "code": code, "test_list": tests, "test_setup_code": setup}],
    )
    (problem,) = read_mbpp_jsonl(str(path), "task.path").problems
    assert score_completion(problem, fenced(code), "code") == 1.0
    name = code.split("def ")[1].split("(")[0]
    wrong = f"def {name}(*args):\n    return None"
    assert score_completion(problem, fenced(wrong), "code") == 0.0


def test_mbpp_tests_that_pass_setup_objects_fail(tmp_path):
    # The documented limit of tests apart from the candidate: arguments must be plain data,
    # so a test that passes an object built by the setup code (MBPP's tree problems) fails.
    setup = (
        "class Node:\n    def __init__(self, value):\n        self.value = value\nroot = Node(3)"
    )
    row = {
        "text": "Return the value of a node.",
        "code": "def value_of(node):\n    return node.value",
        "test_list": ["assert value_of(root) == 3"],
        "test_setup_code": setup,
    }
    (problem,) = read_mbpp_jsonl(str(write_jsonl(tmp_path / "m.jsonl", [row])), "p").problems
    assert score_completion(problem, fenced(row["code"]), "code") == 0.0


# --- config -------------------------------------------------------------------------------


def test_shipped_humaneval_config_uses_code_prompts():
    cfg = load_config(CONF / "humaneval.yaml")
    assert cfg.task.source == "humaneval" and cfg.prompts.answer_format == "code"
    assert "```python" in cfg.prompts.attempt1 and "```python" in cfg.prompts.correction
    correction = cfg.prompts.correction.lower()
    assert not any(word in correction for word in ("wrong", "incorrect", "fail", "pass"))
    assert cfg.verifier.sandbox_timeout_s < cfg.verifier.timeout_s


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["task.source=humaneval"], "prompts.answer_format"),
        (["prompts.answer_format=code"], "prompts.answer_format"),
        (["task.source=mbpp_jsonl", "prompts.answer_format=code"], "task.path"),
        (
            [
                "task.source=humaneval",
                "prompts.answer_format=code",
                "verifier.sandbox_timeout_s=10",
            ],
            "verifier.sandbox_timeout_s",
        ),
        (["verifier.sandbox_memory_mb=1"], "verifier.sandbox_memory_mb"),
    ],
)
def test_code_config_is_validated(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, overrides)
