"""The before/after report: tables from eval.json files, pairing two evaluations by
problem, metrics parsing, files written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from score_ray.evaluate import summarize
from score_ray.report import (
    ACCURACY_PNG,
    MCNEMAR_LABEL,
    PROBLEMS_JSONL,
    REPORT_MD,
    REWARD_PNG,
    comparison_rows,
    mcnemar_cell,
    paired_change,
    problem_rewards,
    read_metrics,
    text_table,
    write_report,
)


def _eval(acc1: float, acc2: float, n: int = 100) -> dict:
    entry = lambda v: {"value": v, "ci": [v - 0.05, v + 0.05]}  # noqa: E731
    return {
        "acc_t1": entry(acc1),
        "acc_t2": entry(acc2),
        "delta": entry(acc2 - acc1),
        "metrics": ["acc_t1", "acc_t2", "delta"],
        "n": n,
        "attempts": 2,
        "model_path": "m",
        "bootstrap": {"resamples": 2000},
        "config": {},
    }


def _real_eval(rewards: list[list[float]], uids: list[str]) -> dict:
    """An eval.json as `score-ray eval` writes it now, from per-problem rewards."""
    summary = summarize(rewards, resamples=200)
    return {
        **summary,
        "metrics": list(summary),
        "n": len(uids),
        "attempts": len(rewards),
        "model_path": "m",
        "bootstrap": {"resamples": 200},
        "config": {},
        "problems": {"uids": uids, "rewards": rewards},
    }


def _write(folder: Path, report: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps(report))
    return folder


def _write_metrics(path: Path) -> Path:
    steps = [
        {"stage": s, "step": i, "acc/t1": 0.3, "acc/t2": 0.4, "time/step": 1.0}
        for i, s in enumerate([1, 1, 2], 1)
    ]
    path.write_text("\n".join(json.dumps(r) for r in steps))
    return path


def test_comparison_rows_without_paired_rewards_show_the_change_without_ci():
    rows = comparison_rows(_eval(0.30, 0.25), _eval(0.40, 0.45))
    assert rows[0] == ["Acc@t1", "0.300 [0.250, 0.350]", "0.400 [0.350, 0.450]", "+0.100 [CI n/a]"]
    assert rows[1][-1] == "+0.200 [CI n/a]"  # Acc@t2: 0.25 -> 0.45
    # deltas are signed: -0.05 at base, +0.05 trained, change +0.10
    assert rows[2][1].startswith("-0.050 [") and rows[2][2].startswith("+0.050 [")
    assert rows[2][3] == "+0.100 [CI n/a]"
    assert rows[3] == [MCNEMAR_LABEL, "n/a", "n/a", ""]  # no i->c, c->i in these evals


def test_comparison_rows_take_the_paired_change_and_its_ci():
    change = {"acc_t1": {"value": 0.12, "ci": [0.05, 0.2]}}
    rows = comparison_rows(_eval(0.30, 0.25), _eval(0.40, 0.45), change)
    assert rows[0][-1] == "+0.120 [+0.050, +0.200]"  # over the shared problems, not 0.1
    assert rows[1][-1] == "+0.200 [CI n/a]"


def test_mcnemar_cell_recovers_counts_from_an_old_eval():
    # The README's base model: i->c 0.002 and c->i 0.048 of 500 are 1 and 24 problems;
    # 2 * P[X <= 1 | 25, 1/2] = 2 * 26 / 2**25 = 1.55e-6.
    old = {"n": 500, "delta_i2c": {"value": 0.002}, "delta_c2i": {"value": 0.048}}
    assert mcnemar_cell(old) == "1.5e-06 (1, 24)"
    new = {"delta": {"value": 0.5, "mcnemar_p": 0.0625, "i2c": 5, "c2i": 0}}
    assert mcnemar_cell(new) == "0.0625 (5, 0)"


def test_problem_rewards_from_eval_json_then_the_jsonl_then_none(tmp_path):
    report = _real_eval([[1, 0], [1, 1]], ["a", "b"])
    assert problem_rewards(report, tmp_path) == {"a": (1, 1), "b": (0, 1)}
    del report["problems"]  # an eval.json from before the field
    assert problem_rewards(report, tmp_path) is None
    rows = [
        {"uid": "a", "question": "q", "gold": "1", "attempts": [{"reward": 1.0}, {"reward": 0.0}]},
        {"uid": "b", "question": "r", "gold": "2", "attempts": [{"reward": 0.0}, {"reward": 0.0}]},
    ]
    (tmp_path / PROBLEMS_JSONL).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert problem_rewards(report, tmp_path) == {"a": (1.0, 0.0), "b": (0.0, 0.0)}


def test_problem_rewards_refuse_repeated_uids(tmp_path):
    with pytest.raises(ValueError, match="1 repeated"):
        problem_rewards(_real_eval([[1, 0], [1, 1]], ["a", "a"]), tmp_path)


def test_identical_evaluations_change_by_zero_over_the_same_problems():
    rewards = {"a": (1.0, 1.0), "b": (0.0, 1.0), "c": (1.0, 0.0)}
    paired = paired_change(rewards, dict(rewards))
    assert not paired.warning and "the same 3 problems" in paired.note
    assert paired.change is not None
    assert all(e["value"] == 0.0 and e["ci"] == [0.0, 0.0] for e in paired.change.values())


def test_different_problem_sets_change_over_the_shared_ones_only():
    # Base solved a, b, c at both attempts; trained solved b and c, and d is new. Over the
    # shared problems b and c nothing changed, although the accuracies differ (1.0 vs 2/3).
    base = {"a": (1.0, 1.0), "b": (1.0, 1.0), "c": (1.0, 1.0)}
    trained = {"b": (1.0, 1.0), "c": (1.0, 1.0), "d": (0.0, 0.0)}
    paired = paired_change(base, trained)
    assert paired.warning and paired.change is not None
    assert "3 base, 3 trained, 2 shared (1 only in base, 1 only in trained)" in paired.note
    acc_t1 = paired.change["acc_t1"]
    assert (acc_t1["value"], acc_t1["ci"]) == (0.0, [0.0, 0.0])


def test_no_shared_problems_or_no_rewards_give_no_change_ci():
    paired = paired_change({"a": (1.0, 1.0)}, {"b": (1.0, 1.0)})
    assert paired.change is None and paired.warning and "share no problem" in paired.note
    paired = paired_change(None, {"b": (1.0, 1.0)})
    assert paired.change is None and "the base evaluation records no per-problem" in paired.note


def test_read_metrics_separates_steps_from_evaluations(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [
        {"eval": "base", "step": 0, "eval/acc_t1": 0.1, "eval/acc_t2": 0.2},
        {"stage": 1, "step": 1, "acc/t1": 0.5, "acc/t2": 0.25, "time/step": 2.0},
        {"stage": 2, "step": 2, "acc/t1": 0.5, "acc/t2": 0.75, "time/step": 4.0},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    steps, evals = read_metrics(path)
    assert [r["step"] for r in steps] == [1, 2] and [r["eval"] for r in evals] == ["base"]


def test_text_table_aligns_columns():
    table = text_table(["a", "bb"], [["xxx", "y"]]).splitlines()
    assert table == ["a    bb", "xxx  y "]


def test_write_report_writes_markdown_and_plots(tmp_path):
    for name, (a1, a2) in {"base": (0.3, 0.25), "trained": (0.4, 0.45)}.items():
        _write(tmp_path / name, _eval(a1, a2))  # old eval.json files: no per-problem rewards
    metrics = _write_metrics(tmp_path / "metrics.jsonl")
    table = write_report(
        tmp_path / "out", tmp_path / "base", tmp_path / "trained", metrics, {"wall time": "1.0 min"}
    )
    assert "Acc@t2" in table and "+0.200 [CI n/a]" in table and "has no CI" in table
    report = (tmp_path / "out" / REPORT_MD).read_text()
    assert "| Acc@t2 | 0.250 [0.200, 0.300] | 0.450 [0.400, 0.500] | +0.200 [CI n/a] |" in report
    assert "**The change column has no CI: the base and trained evaluation" in report
    assert "The base and trained eval.json predates exact intervals" in report
    assert "| I | 2 | 0.300 | 0.400 | 1.0 |" in report and "wall time" in report
    for png in (ACCURACY_PNG, REWARD_PNG):
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"


def test_write_report_pairs_current_evals_and_flags_a_mismatch(tmp_path):
    # base: 4 problems, fixes none and breaks one (d); trained: the same a, b, c plus e,
    # right at both attempts everywhere. Over the shared a, b, c: Acc@t1 1/3 -> 1, c->i 0.
    base = _real_eval([[0, 0, 1, 1], [0, 0, 1, 0]], ["a", "b", "c", "d"])
    trained = _real_eval([[1, 1, 1, 1], [1, 1, 1, 1]], ["a", "b", "c", "e"])
    metrics = _write_metrics(tmp_path / "metrics.jsonl")
    base_dir, trained_dir = _write(tmp_path / "base", base), _write(tmp_path / "trained", trained)
    write_report(tmp_path / "out", base_dir, trained_dir, metrics)
    report = (tmp_path / "out" / REPORT_MD).read_text()
    assert "| Acc@t1 | 0.500 [" in report and "| +0.667 [" in report  # 2/3 over a, b, c
    assert "**Warning: the base and trained evaluations used different problems: 4 base" in report
    # base McNemar: b = 0, c = 1 -> 2 * P[X <= 0 | 1] = 1; trained: no discordant problem
    assert f"| {MCNEMAR_LABEL} | 1.0000 (0, 1) | 1.0000 (0, 0) |  |" in report
    assert "predates" not in report
