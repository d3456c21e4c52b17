"""MATH and MBPP downloads -> the rows score-ray's task sources read, then read by them."""

from __future__ import annotations

import json
from pathlib import Path

from score_ray.config import load_config
from score_ray.tasks import load_task_splits
from score_ray.tasks.convert import main


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_math_from_the_tarball_layout_and_from_rows_with_answers(tmp_path, capsys):
    # The MATH tarball: one .json per problem, the answer only inside the solution.
    algebra = tmp_path / "MATH" / "train" / "algebra"
    algebra.mkdir(parents=True)
    (algebra / "1.json").write_text(
        json.dumps(
            {
                "problem": "Compute $\\frac{1}{2} + 0$.",
                "level": "Level 1",
                "type": "Algebra",
                # The last \\boxed{} is the answer; its braces nest.
                "solution": "Not $\\boxed{1}$ but $\\boxed{\\frac{1}{2}}$.",
            }
        )
    )
    (algebra / "2.json").write_text(json.dumps({"problem": "No answer here.", "solution": "?"}))
    # PRM800K's math_splits / MATH-500: the answer given.
    math500 = write_jsonl(
        tmp_path / "test.jsonl",
        [
            {
                "problem": "What is $2+3$?",
                "answer": "5",
                "subject": "Prealgebra",
                "unique_id": "test/prealgebra/1.json",
                "solution": "$\\boxed{5}$",
            },
            {"problem": "What is $4+4$?", "answer": "8", "subject": "Prealgebra"},
        ],
    )
    train, test = tmp_path / "data" / "train.jsonl", tmp_path / "data" / "test.jsonl"
    assert main(["math", "--input", str(tmp_path / "MATH" / "train"), "--output", str(train)]) == 0
    assert "1 rows (1 without a problem or answer skipped)" in capsys.readouterr().out
    assert main(["math", "--input", str(math500), "--output", str(test)]) == 0
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    assert rows == [
        {
            "problem": "Compute $\\frac{1}{2} + 0$.",
            "answer": "\\frac{1}{2}",
            "level": "Level 1",
            "type": "Algebra",
        }
    ]
    # The math_jsonl source reads them as they are.
    cfg = load_config(
        None,
        [
            "task.source=math_jsonl",
            f"task.path={train}",
            f"task.eval_path={test}",
            "prompts.answer_format=boxed",
        ],
    )
    splits = load_task_splits(cfg.task)
    assert [p.answer for p in splits.train] == ["\\frac{1}{2}"]
    assert sorted(p.answer for p in splits.eval) == ["5", "8"]


def test_mbpp_splits_by_task_id(tmp_path, capsys):
    rows = [
        {
            "task_id": task_id,
            "text": f"Write f{task_id}.",
            "code": "def f(): pass",
            "test_list": [f"assert f{task_id}() is None"],
            "test_setup_code": "",
        }
        for task_id in (1, 11, 510, 511, 601, 974)
    ]
    source = write_jsonl(tmp_path / "mbpp.jsonl", rows)
    assert main(["mbpp", "--input", str(source), "--output-dir", str(tmp_path / "mbpp")]) == 0
    ids = {
        name: [
            json.loads(line)["task_id"]
            for line in (tmp_path / "mbpp" / f"{name}.jsonl").read_text().splitlines()
        ]
        for name in ("prompt", "test", "validation", "train")
    }
    assert ids == {"prompt": [1], "test": [11, 510], "validation": [511], "train": [601, 974]}
    cfg = load_config(
        None,
        [
            "task.source=mbpp_jsonl",
            f"task.path={tmp_path}/mbpp/train.jsonl",
            f"task.eval_path={tmp_path}/mbpp/test.jsonl",
            "prompts.answer_format=code",
        ],
    )
    splits = load_task_splits(cfg.task)
    assert (len(splits.train), len(splits.eval)) == (2, 2)
