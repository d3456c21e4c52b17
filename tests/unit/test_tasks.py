"""Task sources: disjoint, deduplicated, deterministic splits and malformed-row handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from score_ray.config import TaskConfig
from score_ray.tasks import (
    Problem,
    TaskSplits,
    build_splits,
    drop_questions,
    load_task_splits,
    normalize_question,
)
from score_ray.tasks.reasoning_gym_source import decode_entry, encode_entry

# Only 1-digit "a + b" questions: ~120 distinct, so eval and train collide often.
TINY_ARITHMETIC = {
    "min_terms": 2,
    "max_terms": 2,
    "min_digits": 1,
    "max_digits": 1,
    "operators": ["+"],
    "allow_negation": False,
    "allow_parentheses": False,
}


def keys(problems: list[Problem]) -> set[str]:
    return {normalize_question(p.question) for p in problems}


def assert_disjoint_and_unique(splits: TaskSplits) -> None:
    assert len(keys(splits.train)) == len(splits.train), "duplicate question in train"
    assert len(keys(splits.eval)) == len(splits.eval), "duplicate question in eval"
    assert not keys(splits.train) & keys(splits.eval), "train and eval share a question"
    uids = [p.uid for p in splits.train + splits.eval]
    assert len(set(uids)) == len(uids)


def rg_task(**overrides) -> TaskConfig:
    return TaskConfig(
        **{"name": "basic_arithmetic", "train_size": 60, "eval_size": 20, **overrides}
    )


# --- shared split logic -------------------------------------------------------------------


def problem(question: str, answer: str = "1") -> Problem:
    return Problem(uid=question, question=question, answer=answer)


def test_build_splits_dedupes_and_excludes_eval_questions():
    eval_candidates = [problem("a"), problem(" a "), problem("b"), problem("c")]
    train_candidates = [problem("b"), problem("d"), problem("d\n"), problem("a"), problem("e")]
    splits = build_splits(eval_candidates, train_candidates, eval_size=2, train_size=10)
    assert [p.question for p in splits.eval] == ["a", "b"]
    # "c" was not taken for eval, so it is not excluded; it just is not a train candidate.
    assert [p.question for p in splits.train] == ["d", "e"]


def test_build_splits_dev_is_disjoint_and_independent_of_train_size():
    eval_candidates = [problem("a"), problem("b")]
    train_candidates = [problem("b"), problem("c"), problem(" c"), problem("d"), problem("e")]
    splits = build_splits(eval_candidates, train_candidates, eval_size=1, train_size=2, dev_size=2)
    assert [p.question for p in splits.eval] == ["a"]
    assert [p.question for p in splits.dev] == ["b", "c"]  # first of the training stream
    assert [p.question for p in splits.train] == ["d", "e"]  # never a dev or eval question
    fewer = build_splits(eval_candidates, train_candidates, eval_size=1, train_size=1, dev_size=2)
    assert [p.question for p in fewer.dev] == ["b", "c"]
    no_dev = build_splits(eval_candidates, train_candidates, eval_size=1, train_size=2)
    assert no_dev.dev == [] and [p.question for p in no_dev.train] == ["b", "c"]


def test_reasoning_gym_dev_split_is_disjoint_from_both():
    splits = load_task_splits(rg_task(dev_size=15))
    assert (len(splits.train), len(splits.eval), len(splits.dev)) == (60, 20, 15)
    assert not keys(splits.dev) & (keys(splits.train) | keys(splits.eval))
    assert len(keys(splits.dev)) == 15


def test_normalize_question_folds_whitespace_and_compatibility_forms():
    assert normalize_question("  What is\t１＋１?\n") == normalize_question("What is 1+1?")
    assert normalize_question("x + 1") != normalize_question("x + 2")


# --- reasoning-gym ------------------------------------------------------------------------


def test_reasoning_gym_splits_are_disjoint_sized_and_serialisable():
    splits = load_task_splits(rg_task())
    assert (len(splits.train), len(splits.eval), splits.skipped_rows) == (60, 20, 0)
    assert_disjoint_and_unique(splits)
    first = splits.eval[0]
    assert first.meta["source"] == "reasoning_gym" and first.meta["dataset"] == "basic_arithmetic"
    assert first.meta["entry"]["question"] == first.question
    json.dumps([p.meta for p in splits.train + splits.eval], allow_nan=False)


def test_reasoning_gym_is_deterministic_and_seed_dependent():
    first = load_task_splits(rg_task(seed=3))
    again = load_task_splits(rg_task(seed=3))
    other = load_task_splits(rg_task(seed=4))
    assert [p.question for p in first.eval] == [p.question for p in again.eval]
    assert [p.question for p in first.train] == [p.question for p in again.train]
    assert [p.uid for p in first.train] == [p.uid for p in again.train]
    assert [p.question for p in first.eval] != [p.question for p in other.eval]


def test_reasoning_gym_generates_extra_items_to_replace_overlap():
    splits = load_task_splits(rg_task(params=TINY_ARITHMETIC, eval_size=20, train_size=40))
    assert (len(splits.train), len(splits.eval)) == (40, 20)
    assert_disjoint_and_unique(splits)
    # Duplicates and eval questions were dropped, so items past index train_size were used.
    assert max(p.meta["index"] for p in splits.train) >= 40


def test_reasoning_gym_small_space_comes_up_short_but_disjoint(caplog):
    splits = load_task_splits(rg_task(params=TINY_ARITHMETIC, eval_size=40, train_size=500))
    assert 0 < len(splits.train) < 500
    assert_disjoint_and_unique(splits)
    assert "500 requested" in caplog.text


def test_reasoning_gym_all_questions_held_out_names_the_key():
    with pytest.raises(ValueError, match=r"^task\.name: no usable rows"):
        load_task_splits(rg_task(params=TINY_ARITHMETIC, eval_size=1000, train_size=10))


def test_unknown_reasoning_gym_dataset_names_key_and_suggests():
    with pytest.raises(ValueError, match=r"task\.name.*basic_arithmetik.*basic_arithmetic"):
        load_task_splits(rg_task(name="basic_arithmetik"))


@pytest.mark.parametrize(
    "params", [{"no_such_option": 1}, {"min_terms": 5, "max_terms": 2}, {"seed": 1}]
)
def test_bad_reasoning_gym_params_name_the_key(params):
    with pytest.raises(ValueError, match=r"^task\.params"):
        load_task_splits(rg_task(params=params))


def test_unknown_source_is_rejected():
    with pytest.raises(ValueError, match=r"task\.source"):
        load_task_splits(TaskConfig(source="nope"))


def test_entry_encoding_round_trips_through_json():
    entry = {
        "answer": "x",
        "metadata": {"grid": ((1, 2), (3, 4)), "set": {1, 2}, 7: "int key", "f": frozenset("a")},
        "nested": [(1,), {"__tuple__": "collides with a tag"}],
    }
    decoded = decode_entry(json.loads(json.dumps(encode_entry(entry))))
    assert decoded == entry
    assert isinstance(decoded["metadata"]["grid"][0], tuple)


# --- MATH-style jsonl ---------------------------------------------------------------------


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def math_rows(count: int, prefix: str = "q") -> list[dict]:
    return [
        {"problem": f"{prefix}{i}: what is {i} + {i}?", "answer": str(2 * i)} for i in range(count)
    ]


def jsonl_task(path: Path, **overrides) -> TaskConfig:
    return TaskConfig(**{"source": "math_jsonl", "path": str(path), **overrides})


def test_jsonl_skips_and_counts_every_kind_of_malformed_row(tmp_path):
    good = [
        json.dumps({"problem": "What is 1+1?", "answer": "2", "extra": [1]}).encode(),
        b"\xef\xbb\xbf" + json.dumps({"problem": "BOM row", "answer": "3"}).encode(),
        json.dumps(
            {"problem": "Unicode \u00e9\u4e2d\U0001f600?", "answer": "\\frac{1}{2}"}
        ).encode(),
    ]
    bad = [
        b'{"problem": "truncated", "answer": ',  # invalid JSON
        b'{"problem": "bad bytes \xff\xfe", "answer": "1"}',  # invalid UTF-8
        b'["problem", "answer"]',  # not an object
        b'"just a string"',
        b'{"problem": "no answer"}',  # missing field
        b'{"answer": "no problem"}',
        b'{"problem": "", "answer": "1"}',  # empty
        b'{"problem": "blank answer", "answer": "   "}',
        b'{"problem": "int answer", "answer": 4}',  # wrong types
        b'{"problem": null, "answer": "1"}',
        b'{"problem": ["list"], "answer": "1"}',
        b'{"problem": "lone surrogate \\ud800", "answer": "1"}',
        b"[" * 100_000,  # deeply nested
    ]
    lines = [good[0], *bad[:7], b"", b"   ", good[1], *bad[7:], good[2]]
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\r\n")
    splits = load_task_splits(jsonl_task(path, eval_size=1))
    assert splits.skipped_rows == len(bad)
    assert len(splits.train) + len(splits.eval) == len(good)
    questions = {p.question for p in splits.train + splits.eval}
    assert questions == {"What is 1+1?", "BOM row", "Unicode \u00e9\u4e2d\U0001f600?"}
    assert all(p.meta == {"source": "math_jsonl"} for p in splits.train + splits.eval)


def test_jsonl_holdout_is_deterministic_disjoint_capped_and_deduped(tmp_path):
    rows = math_rows(50)
    rows += [{"problem": "  " + rows[3]["problem"] + "\n", "answer": "dup"}]  # whitespace dup
    path = write_rows(tmp_path / "train.jsonl", rows)
    first = load_task_splits(jsonl_task(path, eval_size=10, train_size=25))
    again = load_task_splits(jsonl_task(path, eval_size=10, train_size=25))
    other_seed = load_task_splits(jsonl_task(path, eval_size=10, train_size=25, seed=1))
    assert (len(first.eval), len(first.train)) == (10, 25)
    assert_disjoint_and_unique(first)
    assert [p.uid for p in first.eval] == [p.uid for p in again.eval]
    assert [p.uid for p in first.train] == [p.uid for p in again.train]
    assert keys(first.eval) != keys(other_seed.eval)
    everything = load_task_splits(jsonl_task(path, eval_size=10, train_size=1000))
    assert len(everything.train) == 40  # 50 distinct questions minus 10 held out


def test_jsonl_eval_path_overlap_is_removed_from_train(tmp_path):
    train_rows = math_rows(30)
    eval_rows = math_rows(5, prefix="held") + train_rows[:4]
    train_path = write_rows(tmp_path / "train.jsonl", train_rows)
    eval_path = write_rows(tmp_path / "eval.jsonl", eval_rows)
    splits = load_task_splits(jsonl_task(train_path, eval_path=str(eval_path), eval_size=100))
    assert len(splits.eval) == 9
    assert len(splits.train) == 26
    assert_disjoint_and_unique(splits)


def test_jsonl_with_no_usable_rows_names_the_key(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"problem": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"^task\.path: no usable rows \(2 malformed"):
        load_task_splits(jsonl_task(path))


def test_jsonl_all_rows_held_out_names_the_key(tmp_path):
    path = write_rows(tmp_path / "train.jsonl", math_rows(3))
    with pytest.raises(ValueError, match=r"^task\.path: no usable rows.*held out"):
        load_task_splits(jsonl_task(path, eval_size=5))


def test_jsonl_empty_eval_file_names_eval_path(tmp_path):
    train_path = write_rows(tmp_path / "train.jsonl", math_rows(3))
    eval_path = tmp_path / "eval.jsonl"
    eval_path.write_bytes(b"\xff\n")
    with pytest.raises(ValueError, match=r"^task\.eval_path: no usable rows"):
        load_task_splits(jsonl_task(train_path, eval_path=str(eval_path)))


def test_jsonl_missing_file_names_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"^task\.path: file not found"):
        load_task_splits(jsonl_task(tmp_path / "nope.jsonl"))


def test_drop_questions_removes_few_shot_examples_after_normalisation():
    problems = [Problem("a", "Calculate 1 + 2.", "3"), Problem("b", "Calculate 2 + 2.", "4")]
    kept, dropped = drop_questions(problems, ["Calculate  1 + 2."])
    assert [p.uid for p in kept] == ["b"] and dropped == 1
    assert drop_questions(problems, []) == (problems, 0)
