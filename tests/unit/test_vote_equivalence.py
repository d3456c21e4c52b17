"""The majority vote groups answers by the verifier's own equivalence
(`score_ray.scaling.vote_keys` with `score_ray.verify.scorers.answer_agreement`), on hand-worked
cases: math-verify for math answers, the dataset's scorer for reasoning-gym answers."""

from __future__ import annotations

import pytest

from score_ray.scaling import majority_vote, vote_keys
from score_ray.tasks.base import Problem
from score_ray.verify.scorers import MAX_MATH_ANSWER_CHARS, answer_agreement

TOO_LONG = "1" * (MAX_MATH_ANSWER_CHARS + 1)
MATH = Problem(uid="m0", question="Halve 1.", answer="\\frac{1}{2}", meta={"source": "math_jsonl"})


def _gym_problem() -> Problem:
    from score_ray.tasks.reasoning_gym_source import _generate

    params = {"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2}
    return next(_generate("basic_arithmetic", params, 0, 1))


def test_math_answers_vote_by_math_verify_equivalence():
    agree = answer_agreement(MATH)
    answers = ["0.5", "1/2", "\\frac{1}{2}", "2", TOO_LONG, None, "2.0", "x+", "x +"]
    # 0.5, 1/2 and \frac{1}{2} are one class (key: the first, "0.5"); 2 and 2.0 another.
    # The verifier scores an answer over 1000 characters 0 unparsed: it casts no vote, like
    # a missing one. "x+" is no expression, but math-verify falls back to comparing such
    # answers as strings, so it votes, and "x +" (another string) votes apart.
    keys = vote_keys(answers, agree)
    assert keys == ["0.5", "0.5", "0.5", "2", None, None, "2", "x+", "x +"]


def test_equivalent_spellings_outvote_a_repeated_wrong_answer():
    agree = answer_agreement(MATH)
    answers = ["1/2", "0.5", "\\frac{1}{2}", "3", "3"]
    rewards = [1.0, 1.0, 1.0, 0.0, 0.0]
    # By text, "3" (2 votes) beats three one-vote spellings of 1/2: the vote earns 0.
    assert majority_vote(vote_keys(answers), rewards) == 0.0
    # By the verifier's equivalence, 1/2 has 3 votes against 2.
    assert majority_vote(vote_keys(answers, agree), rewards) == 1.0


def test_answers_the_verifier_cannot_score_do_not_outvote_a_scored_one():
    agree = answer_agreement(MATH)
    # Three over-long answers (scored 0 unparsed) abstain; "1/2" wins alone.
    keys = vote_keys([TOO_LONG, TOO_LONG, TOO_LONG, "1/2"], agree)
    assert keys == [None, None, None, "1/2"]
    assert majority_vote(keys, [0.0, 0.0, 0.0, 1.0]) == 1.0


def test_gym_integer_answers_vote_as_the_scorer_compares_them():
    problem = _gym_problem()
    agree = answer_agreement(problem)
    # basic_arithmetic's scorer is an exact string match: "-053" is not "-53" to it, nor
    # "7." "7", so they are different votes (text normalisation would merge "7." and "7").
    assert vote_keys(["-53", "-053", "-53", "7.", "7"], agree) == ["-53", "-053", "-53", "7.", "7"]
    assert vote_keys(["7.", "7"]) == ["7", "7"]


def test_code_problems_vote_by_normalised_text():
    code = Problem(uid="c0", question="f", answer="", meta={"source": "humaneval"})
    assert answer_agreement(code) is None
    assert vote_keys(["return 1", "return  1"], answer_agreement(code)) == ["return1"] * 2


def test_an_agreement_that_raises_is_no_match_and_no_crash():
    def broken(a: str, b: str) -> bool:
        if "boom" in (a, b):
            raise RecursionError("hostile input")
        return a == b

    # "boom" raises even against itself: no vote. The others vote as usual.
    assert vote_keys(["1", "boom", "1", "2"], broken) == ["1", None, "1", "2"]


def test_agreement_is_called_once_per_new_distinct_answer_and_class():
    calls = []

    def agree(a: str, b: str) -> bool:
        calls.append((a, b))
        return a.strip("0") == b.strip("0")  # "5" ~ "05" ~ "50"

    keys = vote_keys(["5", "05", "5", "7", "05", "50"], agree)
    assert keys == ["5", "5", "5", "7", "5", "5"]
    # "5": self. "05": self, vs "5". "7": self, vs "5". "50": self, vs "5". Repeats: no call.
    assert calls == [
        ("5", "5"),
        ("05", "05"),
        ("5", "05"),
        ("7", "7"),
        ("5", "7"),
        ("50", "50"),
        ("5", "50"),
    ]


# Not 9^{9^{9^{9}}}: it spins sympy in C for ever. Answers like it time out in the Verifier
# actors, and `eval_cli.problem_vote_keys` keeps those out of the vote (test_eval_scaling.py).
@pytest.mark.parametrize("hostile", ["\\boxed{" * 50, "}" * 1000, "a" * 2000, "\x00\\frac"])
def test_hostile_math_answers_never_crash_the_vote(hostile):
    keys = vote_keys([hostile, "1/2", hostile], answer_agreement(MATH))
    assert keys[1] == "1/2"
