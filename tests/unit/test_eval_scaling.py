"""`score-ray eval --parallel N [--attempts 2]` and `--attempts K`: the flags, the sampling
glue (with a fake rollout group and verifier pool), eval.json's "scaling" and the plots."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from score_ray.algo.traces import Attempt
from score_ray.cli import main as cli_main
from score_ray.config import ConfigError, load_config
from score_ray.eval_cli import (
    EVAL_JSON,
    ScalingPlan,
    add_sample_rows,
    eval_plan,
    sample_scaling,
    scaling_report,
    write_outputs,
)
from score_ray.evaluate import summarize
from score_ray.report import BUDGET_PNG, TURNS_PNG
from score_ray.scaling import format_scaling
from score_ray.tasks.base import Problem

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.mark.parametrize(
    ("attempts", "parallel", "plan"),
    [
        (None, 0, (2, None)),  # unchanged default
        (5, 0, (5, None)),
        (None, 8, (2, ScalingPlan(8))),  # the greedy two attempts stay
        (1, 8, (2, ScalingPlan(8))),
        (2, 8, (2, ScalingPlan(8, sequential=True))),
        (None, 1, (2, ScalingPlan(1))),
    ],
)
def test_eval_plan(attempts, parallel, plan):
    assert eval_plan(attempts, parallel) == plan


@pytest.mark.parametrize(
    ("attempts", "parallel", "message"),
    [
        (6, 0, "--attempts: at most 5 attempts are supported, got 6"),
        (1, 0, "--attempts: must be >= 2, got 1"),
        (3, 8, "--attempts with --parallel: 1"),
        (2, 7, "--parallel 7 --attempts 2: a budget of 7 samples does not split"),
        (2, 1, "does not split"),
        (None, -1, "--parallel: must be >= 1"),
    ],
)
def test_eval_plan_rejects_with_the_flag_named(attempts, parallel, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        eval_plan(attempts, parallel)


def test_cli_rejects_more_than_five_attempts(capsys):
    assert cli_main(["eval", "--attempts", "6", "model.path=tiny-llama"]) == 2
    assert "--attempts: at most 5 attempts are supported, got 6" in capsys.readouterr().err


def _answer(text: str) -> str:
    return f"so <answer>{text}</answer>"


class FakeRollout:
    """Problem i's first attempts answer `firsts[i]`; every correction answers "7"."""

    def __init__(self, firsts: list[list[str]]):
        self.firsts = firsts
        self.given: list[list[Attempt]] | None = None
        self.calls: list[tuple] = []

    def sample_first_attempts(self, problems, samples_per_prompt, seed):
        self.calls.append(("first", samples_per_prompt, seed))
        return [[Attempt([1], [0.0], _answer(a)) for a in answers] for answers in self.firsts]

    def generate(self, problems, samples_per_prompt, greedy, seed, first_attempts=None):
        self.calls.append(("generate", samples_per_prompt, greedy, seed))
        self.given = first_attempts
        return [
            SimpleNamespace(attempt2_text=_answer("7"))
            for given in first_attempts
            for _ in range(samples_per_prompt)
        ]


class FakeVerifiers:
    """Right iff the answer is "7"; counts one error per call."""

    def __init__(self):
        self.items: list[tuple[Problem, str]] = []

    def score(self, items):
        self.items += items
        stats = SimpleNamespace(as_metrics=lambda: {"verify/errors": 1}, faulted=[])
        return [1.0 if text == _answer("7") else 0.0 for _, text in items], stats


def _problems(n: int) -> list[Problem]:
    return [Problem(uid=f"p{i}", question=f"q{i}", answer="7", meta={}) for i in range(n)]


def test_sample_scaling_reuses_the_first_half_for_the_sequential_scheme(tmp_path):
    cfg = load_config(CONF / "tiny.yaml", [f"output_dir={tmp_path}"])
    rollout = FakeRollout([["5", "7", "5", "oops"], ["7", "7", "7", "7"]])
    verifiers = FakeVerifiers()
    problems = _problems(2)
    plan = ScalingPlan(4, sequential=True)
    samples, stats = sample_scaling(rollout, verifiers, problems, plan, cfg)
    assert rollout.calls == [("first", 4, cfg.train.seed), ("generate", 2, False, cfg.train.seed)]
    assert [[a.text for a in given] for given in rollout.given] == [
        [_answer("5"), _answer("7")],
        [_answer("7"), _answer("7")],
    ]
    # 8 first attempts, then 4 corrections, each scored against its own problem, once.
    assert [p.uid for p, _ in verifiers.items] == ["p0"] * 4 + ["p1"] * 4 + ["p0"] * 2 + ["p1"] * 2
    assert samples.first.answers[0] == ["5", "7", "5", "oops"]
    assert samples.first.rewards == [[0, 1, 0, 0], [1, 1, 1, 1]]
    assert samples.revised.answers == [["7", "7"], ["7", "7"]]
    assert stats == {"verify/errors": 1}


def test_chunks_get_their_own_seeds_and_keep_the_problem_order(tmp_path, monkeypatch):
    monkeypatch.setattr("score_ray.eval_cli.EVAL_CHUNK_PER_WORKER", 1)  # one problem a chunk
    cfg = load_config(CONF / "tiny.yaml", [f"output_dir={tmp_path}", "train.seed=5"])

    class PerProblem(FakeRollout):
        def sample_first_attempts(self, problems, samples_per_prompt, seed):
            self.calls.append(("first", samples_per_prompt, seed))
            return [[Attempt([1], [0.0], _answer(p.uid))] * samples_per_prompt for p in problems]

    rollout = PerProblem([])
    samples, _ = sample_scaling(rollout, FakeVerifiers(), _problems(3), ScalingPlan(2, True), cfg)
    # tiny.yaml has one rollout worker: chunk c is seeded 5 + c.
    assert [call[-1] for call in rollout.calls] == [5, 5, 6, 6, 7, 7]
    assert samples.first.answers == [["p0", "p0"], ["p1", "p1"], ["p2", "p2"]]
    assert samples.revised.answers == [["7"], ["7"], ["7"]]


def test_parallel_plan_samples_no_corrections(tmp_path):
    cfg = load_config(CONF / "tiny.yaml", [f"output_dir={tmp_path}"])
    rollout = FakeRollout([["7", "5"]])
    samples, _ = sample_scaling(rollout, FakeVerifiers(), _problems(1), ScalingPlan(2), cfg)
    assert samples.revised is None and [c[0] for c in rollout.calls] == ["first"]


def _report_with_scaling(tmp_path: Path, plan: ScalingPlan) -> tuple[dict, list[dict]]:
    cfg = load_config(CONF / "tiny.yaml", [f"output_dir={tmp_path}"])
    rollout = FakeRollout([["5", "7", "5", "oops"], ["7", "7", "7", "7"]])
    samples, _ = sample_scaling(rollout, FakeVerifiers(), _problems(2), plan, cfg)
    rewards = [[0.0, 1.0], [1.0, 1.0], [1.0, 1.0]]
    summary = summarize(rewards, resamples=50)
    report = {**summary, "metrics": list(summary), "n": 2, "attempts": 3}
    report["scaling"] = scaling_report(samples, plan, cfg)
    rows = [{"uid": "p0"}, {"uid": "p1"}]
    add_sample_rows(rows, samples)
    return report, rows


def test_scaling_report_by_hand(tmp_path):
    report, rows = _report_with_scaling(tmp_path, ScalingPlan(4, sequential=True))
    scaling = report["scaling"]
    assert scaling["budgets"] == [1, 2, 4] and scaling["schemes"] == ["parallel", "sequential"]
    curves = scaling["curves"]
    # p0 answers 5, 7, 5, oops (a wrong answer, not a missing one): 5 wins, 0; p1 all 7: 1.
    # Sequential: every correction says 7, so 1 on both.
    assert curves["parallel/majority@4"]["value"] == 0.5
    assert curves["parallel/pass@1"]["value"] == pytest.approx((1 / 4 + 1) / 2)
    assert curves["sequential/majority@4"]["value"] == 1.0
    assert "sequential/majority@1" not in curves
    assert rows[0]["samples"]["sequential"] == [{"answer": "7", "reward": 1.0}] * 2
    assert rows[0]["samples"]["parallel"][3] == {"answer": "oops", "reward": 0.0}
    table = format_scaling(curves, scaling["budgets"]).splitlines()
    header = "budget parallel majority parallel pass sequential majority sequential pass"
    assert table[0].split() == header.split()
    assert table[1].startswith("1 ") and table[1].rstrip().endswith("-")


def test_write_outputs_draws_both_plots_with_scaling(tmp_path):
    report, rows = _report_with_scaling(tmp_path, ScalingPlan(4, sequential=True))
    write_outputs(tmp_path / "out", report, rows)
    for png in (TURNS_PNG, BUDGET_PNG):
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "out" / EVAL_JSON).read_text())["scaling"]["samples"] == 4


def test_a_plain_two_attempt_evaluation_writes_no_plot(tmp_path):
    summary = summarize([[0.0, 1.0], [1.0, 1.0]], resamples=50)
    report = {**summary, "metrics": list(summary), "n": 2, "attempts": 2}
    write_outputs(tmp_path, report, [])
    assert sorted(p.name for p in tmp_path.iterdir()) == [EVAL_JSON, "eval_problems.jsonl"]


def test_the_vote_groups_by_the_verifier_and_leaves_out_what_it_failed_on(tmp_path):
    """Math samples vote by math-verify equivalence; an item whose scoring timed out or raised
    in a Verifier actor casts no vote (its answer is never parsed in the driver), while the
    problem's row keeps its text."""
    cfg = load_config(CONF / "tiny.yaml", [f"output_dir={tmp_path}"])
    rollout = FakeRollout([["1/2", "0.5", "\\frac{1}{2}", "3"]])

    class Faulting(FakeVerifiers):
        def score(self, items):
            rewards, stats = super().score(items)
            stats.faulted = [2]  # "\frac{1}{2}" hung in its actor
            return rewards, stats

    math = [Problem(uid="m0", question="q", answer="1/2", meta={"source": "math_jsonl"})]
    samples, _ = sample_scaling(rollout, Faulting(), math, ScalingPlan(4), cfg)
    assert samples.first.keys == [["1/2", "1/2", None, "3"]]
    assert samples.first.answers == [["1/2", "0.5", "\\frac{1}{2}", "3"]]
    assert samples.vote_s >= 0.0
