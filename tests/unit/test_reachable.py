"""Flip-reachable filtering (pure logic): solve counts, the 0 < solved < k rule, the file."""

import json

import pytest

from score_ray.reachable import (
    is_reachable,
    load_counts,
    reachable_problems,
    save_counts,
    solved_counts,
)
from score_ray.tasks.base import Problem


def test_solved_counts_by_hand():
    # three problems x 3 samples, problem-major
    rewards = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert solved_counts(rewards, 3) == [2, 0, 3]
    with pytest.raises(ValueError, match="whole number of 3-sample groups"):
        solved_counts(rewards[:4], 3)


def test_reachable_means_sometimes_but_not_always():
    assert [is_reachable(solved, 4) for solved in range(5)] == [False, True, True, True, False]


def test_reachable_problems_keep_order_and_skip_unprobed():
    problems = [Problem(f"u{i}", f"q{i}", str(i)) for i in range(4)]
    solved = {"u0": 4, "u1": 1, "u3": 3}  # u2 was not probed
    assert [p.uid for p in reachable_problems(problems, solved, 4)] == ["u1", "u3"]


def test_counts_round_trip_and_refuse_another_config(tmp_path):
    path = tmp_path / "reachable_problems.json"
    save_counts(path, {"u0": 1, "u1": 0}, 4)
    assert not path.with_suffix(".partial").exists()
    assert load_counts(path, {"u0", "u1", "u9"}, 4) == {"u0": 1, "u1": 0}
    with pytest.raises(ValueError, match=r"train\.reachable_samples is 8"):
        load_counts(path, {"u0", "u1"}, 8)
    with pytest.raises(ValueError, match="problem u1 is not in this run's training split"):
        load_counts(path, {"u0"}, 4)
    assert json.loads(path.read_text())["samples"] == 4
