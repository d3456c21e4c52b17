"""Fix/break counts, answer changes and the offline first-attempt pool (pure logic)."""

from __future__ import annotations

import json

import pytest

from score_ray.algo.traces import Attempt
from score_ray.offline import OfflinePool, offline_prompts_per_step, pool_problems
from score_ray.tasks.base import Problem
from score_ray.transitions import answer_change_metrics, transition_counts


def test_transition_counts_by_hand():
    # pairs (r1, r2): 01 fix, 10 break, 11, 00, 01 fix
    counts = transition_counts([0, 1, 1, 0, 0], [1, 0, 1, 0, 1])
    assert counts == {"fixes": 2, "breaks": 1, "wrong1": 3}
    with pytest.raises(ValueError):
        transition_counts([1], [1, 0])


def test_answer_change_metrics_by_hand():
    # four traces: copied right answer, changed wrong answer, copied wrong answer, missing->5
    answers1 = ["3", "7", "8", None]
    answers2 = ["3", "6", "8", "5"]
    r1 = [1.0, 0.0, 0.0, 0.0]
    metrics = answer_change_metrics(answers1, answers2, r1)
    assert metrics["answer_changed"] == pytest.approx(2 / 4)
    assert metrics["answer_changed_wrong1"] == pytest.approx(2 / 3)
    assert answer_change_metrics(["1"], ["1"], [1.0])["answer_changed_wrong1"] == 0.0


def test_offline_prompts_per_step_rounds():
    assert offline_prompts_per_step(8, 0.0) == 0
    assert offline_prompts_per_step(8, 0.25) == 2
    assert offline_prompts_per_step(8, 1.0) == 8


def _problems(n: int) -> list[Problem]:
    return [Problem(f"u{i}", f"q{i}", str(i)) for i in range(n)]


def test_pool_problems_is_a_seeded_subset():
    train = _problems(10)
    picked = pool_problems(train, 4, seed=1)
    assert len({p.uid for p in picked}) == 4 and picked == pool_problems(train, 4, seed=1)
    assert pool_problems(train, 50, seed=1) == train


def test_offline_pool_draws_round_robin_saves_and_resumes(tmp_path):
    problems = _problems(3)
    attempts = [[Attempt([i, 7], [-0.5, -0.25], f"<answer>{i}</answer>", i == 2)] for i in range(3)]
    pool = OfflinePool(problems, attempts, seed=0)
    first, given = pool.next_batch(2)
    assert given == [attempts[int(p.uid[1:])] for p in first]
    state = json.loads(json.dumps(pool.state()))  # what a checkpoint keeps
    path = tmp_path / "pool.jsonl"
    pool.save(path)
    rest, _ = pool.next_batch(2)
    # every problem once per pass: the third draw is the one the first two left
    assert {p.uid for p in first + rest[:1]} == {"u0", "u1", "u2"}

    resumed = OfflinePool.load(path, {p.uid: p for p in problems}, seed=0)
    resumed.load_state(state)
    again, given_again = resumed.next_batch(2)
    assert [p.uid for p in again] == [p.uid for p in rest]
    assert given_again[0][0] == attempts[int(rest[0].uid[1:])][0]  # attempts round-trip
    assert not (tmp_path / "pool.partial").exists()


def test_offline_pool_from_another_task_is_refused(tmp_path):
    pool = OfflinePool(_problems(2), [[Attempt([1], [-1.0], "x")]] * 2, seed=0)
    pool.save(tmp_path / "pool.jsonl")
    with pytest.raises(ValueError, match="not in this run's training split"):
        OfflinePool.load(tmp_path / "pool.jsonl", {"u0": _problems(1)[0]}, seed=0)
