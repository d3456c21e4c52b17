"""Inference-time scaling: majority vote, pass@k and budget splitting on hand-worked numbers."""

from __future__ import annotations

import math

import pytest

from score_ray.scaling import (
    chains_for_budget,
    curve,
    majority_at_budget,
    majority_vote,
    normalize_answer,
    pass_at_k,
    problem_curves,
    sample_budgets,
    scaling_summary,
    vote_keys,
)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("7", "7"),
        (" 1 / 2 ", "1/2"),
        ("1/2.", "1/2"),
        ("Yes", "yes"),
        ("  ", None),
        (".", None),
        (None, None),
    ],
)
def test_normalize_answer(raw, key):
    assert normalize_answer(raw) == key


def test_majority_vote_picks_the_most_frequent_answer():
    # 7 twice (right), 5 once (wrong): 7 wins.
    assert majority_vote(vote_keys(["7", "5", " 7"]), [1.0, 0.0, 1.0]) == 1.0
    # 5 twice (wrong) beats one right 7: self-consistency can outvote the right answer.
    assert majority_vote(["7", "5", "5"], [1.0, 0.0, 0.0]) == 0.0


def test_unparseable_answers_cast_no_vote():
    # Three samples without an answer do not outvote the single 7.
    assert majority_vote([None, None, None, "7"], [0.0, 0.0, 0.0, 1.0]) == 1.0
    # No answer at all: nothing wins, the vote earns 0.
    assert majority_vote([None, None], [0.0, 0.0]) == 0.0
    assert majority_vote([], []) == 0.0


def test_a_tie_earns_the_winners_mean_whatever_the_order():
    # 7, 7, 5, 5 (7 right): a 2-2 tie, broken at random, is right half the time.
    assert majority_vote(["7", "7", "5", "5", None], [1, 1, 0, 0, 0]) == 0.5
    assert majority_vote(["5", "7", "5", "7"], [0, 1, 0, 1]) == 0.5
    # A three-way tie with one right answer: 1/3.
    assert majority_vote(["1", "2", "3"], [0, 1, 0]) == pytest.approx(1 / 3)


def test_answers_merged_by_normalisation_count_their_verified_share():
    # "Yes" (right) and "yes" (wrong by a case-sensitive scorer) vote together: 1/2.
    assert majority_vote(vote_keys(["Yes", "yes", "no"]), [1, 0, 0]) == 0.5


def test_majority_vote_needs_one_reward_per_answer():
    with pytest.raises(ValueError):
        majority_vote(["7"], [1.0, 0.0])


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 1, 1, 0.25),  # c / n
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2) = 1 - 1/6
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (4, 3, 2, 1.0),  # n - c < k: every pair holds a right sample
        (4, 0, 4, 0.0),
        (4, 4, 1, 1.0),
    ],
)
def test_pass_at_k_by_hand(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_matches_the_binomial_ratio_for_large_n():
    n, c, k = 200, 7, 16
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_rejects_bad_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_sample_budgets_are_powers_of_two_then_n():
    assert sample_budgets(1) == [1]
    assert sample_budgets(8) == [1, 2, 4, 8]
    assert sample_budgets(32) == [1, 2, 4, 8, 16, 32]
    assert sample_budgets(12) == [1, 2, 4, 8, 12]
    with pytest.raises(ValueError):
        sample_budgets(0)


def test_chains_for_budget_spend_the_same_samples():
    assert chains_for_budget(32) == 16  # 16 first attempts + 16 corrections
    assert chains_for_budget(2) == 1
    assert chains_for_budget(9, attempts=3) == 3
    for budget in (1, 3):
        with pytest.raises(ValueError, match="does not split"):
            chains_for_budget(budget)


def test_majority_at_budget_averages_disjoint_groups():
    answers = ["7", "7", "5", "5", "7", None, "5", "5"]
    rewards = [1, 1, 0, 0, 1, 0, 0, 0]
    # size 1: the share of right samples, 3/8.
    assert majority_at_budget(answers, rewards, 1) == pytest.approx(3 / 8)
    # size 2: groups (7,7)=1, (5,5)=0, (7,None)=1, (5,5)=0 -> 0.5.
    assert majority_at_budget(answers, rewards, 2) == 0.5
    # size 4: (7,7,5,5) tie = 0.5; (7,None,5,5) = 0 -> 0.25.
    assert majority_at_budget(answers, rewards, 4) == 0.25
    # size 3: two groups (7,7,5)=1 and (5,7,None)= tie 0.5; the last two samples left out.
    assert majority_at_budget(answers, rewards, 3) == 0.75
    with pytest.raises(ValueError):
        majority_at_budget(answers, rewards, 9)


def test_problem_curves_for_both_schemes_by_hand():
    # Four first attempts: 5, 7, 5, None (7 right); the first two corrected to 7 and 7.
    first = (["5", "7", "5", None], [0, 1, 0, 0])
    revised = (["7", "7"], [1, 1])
    values = problem_curves(first, revised, [1, 2, 4])
    assert values == {
        "parallel/majority@1": 0.25,
        "parallel/pass@1": 0.25,
        "parallel/majority@2": 0.25,  # (5,7) tie 0.5, (5,None) 0
        "parallel/pass@2": 0.5,  # 1 - C(3,2)/C(4,2)
        "parallel/majority@4": 0.0,  # 5 twice beats 7 once
        "parallel/pass@4": 1.0,
        "sequential/majority@2": 1.0,  # one chain per group, each corrected to 7
        "sequential/pass@2": 1.0,
        "sequential/majority@4": 1.0,  # both corrections say 7
        "sequential/pass@4": 1.0,
    }
    assert "sequential/majority@2" not in problem_curves(first, None, [1, 2, 4])


def test_scaling_summary_means_over_problems_with_intervals():
    right = problem_curves((["7", "7"], [1, 1]), None, [1, 2])
    wrong = problem_curves((["5", None], [0, 0]), None, [1, 2])
    summary = scaling_summary([right, wrong], resamples=200)
    entry = summary["parallel/majority@2"]
    assert entry["value"] == 0.5 and entry["method"] == "paired percentile bootstrap"
    assert entry["ci"][0] <= 0.5 <= entry["ci"][1]
    assert [budget for budget, _ in curve(summary, "parallel", "majority")] == [1, 2]
    assert curve(summary, "sequential", "majority") == []
