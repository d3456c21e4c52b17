"""The before/after report: tables from eval.json files, metrics parsing, files written."""

from __future__ import annotations

import json

from score_ray.report import (
    ACCURACY_PNG,
    REPORT_MD,
    REWARD_PNG,
    comparison_rows,
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


def test_comparison_rows_show_values_cis_and_change():
    rows = comparison_rows(_eval(0.30, 0.25), _eval(0.40, 0.45))
    assert rows[0] == ["Acc@t1", "0.300 [0.250, 0.350]", "0.400 [0.350, 0.450]", "+0.100"]
    assert rows[1][-1] == "+0.200"  # Acc@t2: 0.25 -> 0.45
    # deltas are signed: -0.05 at base, +0.05 trained, change +0.10
    assert rows[2][1].startswith("-0.050 [") and rows[2][2].startswith("+0.050 [")
    assert rows[2][3] == "+0.100"


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
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps(_eval(a1, a2)))
    metrics = tmp_path / "metrics.jsonl"
    steps = [
        {"stage": s, "step": i, "acc/t1": 0.3, "acc/t2": 0.4, "time/step": 1.0}
        for i, s in enumerate([1, 1, 2], 1)
    ]
    metrics.write_text("\n".join(json.dumps(r) for r in steps))
    table = write_report(
        tmp_path / "out", tmp_path / "base", tmp_path / "trained", metrics, {"wall time": "1.0 min"}
    )
    assert "Acc@t2" in table and "+0.200" in table
    report = (tmp_path / "out" / REPORT_MD).read_text()
    assert "| Acc@t2 | 0.250 [0.200, 0.300] | 0.450 [0.400, 0.500] | +0.200 |" in report
    assert "| I | 2 | 0.300 | 0.400 | 1.0 |" in report and "wall time" in report
    for png in (ACCURACY_PNG, REWARD_PNG):
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"
