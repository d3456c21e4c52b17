"""`score-ray eval --parallel 4 --attempts 2` on the tiny model through the real stack: a
real Ray, a vLLM rollout worker and the verifier pool, in-process (about a minute).

The random-weight model answers nothing right, so this checks the plumbing: every sample
is generated, scored and voted on, and eval.json, eval_problems.jsonl and both plots exist.
"""

from __future__ import annotations

import json

from score_ray.cli import main as cli_main
from score_ray.report import BUDGET_PNG, TURNS_PNG
from tests.integration.conftest import CONF

PROBLEMS = 3
SAMPLES = 4


def test_eval_parallel_and_sequential_scaling(ray_local, tmp_path, capsys):
    argv = [
        "eval",
        "--config",
        str(CONF / "tiny.yaml"),
        "--parallel",
        str(SAMPLES),
        "--attempts",
        "2",
        f"output_dir={tmp_path}",
        f"task.eval_size={PROBLEMS}",
    ]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "sequential majority" in printed and "acc_t1" in printed

    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["n"] == PROBLEMS and report["attempts"] == 2  # the greedy evaluation stays
    scaling = report["scaling"]
    assert scaling["budgets"] == [1, 2, 4] and scaling["schemes"] == ["parallel", "sequential"]
    assert set(scaling["curves"]) == {
        f"{scheme}/{kind}@{b}"
        for scheme, budgets in (("parallel", (1, 2, 4)), ("sequential", (2, 4)))
        for kind in ("majority", "pass")
        for b in budgets
    }
    for entry in scaling["curves"].values():
        low, high = entry["ci"]
        assert 0.0 <= low <= entry["value"] <= high <= 1.0
    rows = [
        json.loads(line) for line in (tmp_path / "eval_problems.jsonl").read_text().splitlines()
    ]
    assert [len(row["samples"]["parallel"]) for row in rows] == [SAMPLES] * PROBLEMS
    assert [len(row["samples"]["sequential"]) for row in rows] == [SAMPLES // 2] * PROBLEMS
    # The verifier pool scored every greedy attempt and every sample, with no fault.
    assert report["verify"]["verify/errors"] == 0 and report["verify"]["verify/timeouts"] == 0
    for png in (TURNS_PNG, BUDGET_PNG):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
