"""Inference-time scaling (SCoRe paper, Sec. 6.2 and Fig. 6): parallel vs sequential samples.

With a budget of b samples per problem, two ways to spend it:

    parallel     b first attempts, then a majority vote over their answers (self-consistency,
                 Wang et al. 2023)
    sequential   b/2 first attempts, each self-corrected once, then a majority vote over the
                 b/2 corrected answers (the paper's sequential + parallel scheme)

Pure functions, no Ray and no model, so each formula is tested on hand-worked numbers:

    normalize_answer(answer)                     a code answer's vote key
    vote_keys(answers, agree)                    one key per class of answers the verifier
                                                 counts as equal ("1/2", "0.5", "\\frac{1}{2}")
    majority_vote(keys, rewards)                 the reward one vote earns (ties split)
    pass_at_k(n, c, k)                           unbiased pass@k (Chen et al. 2021)
    sample_budgets(n)                            1, 2, 4, ... up to n
    chains_for_budget(budget, attempts)          first attempts a sequential budget affords
    majority_at_budget(keys, rewards, size)      mean vote over disjoint groups of samples
    problem_curves(...)                          every curve's value on one problem
    scaling_summary(...)                         the curves' means with bootstrap CIs
    curve(summary, scheme, kind), format_scaling(...)   one curve back; the terminal table

`score_ray.eval_cli` draws the samples (`score-ray eval --parallel N [--attempts 2]`) and
docs/evaluation_statistics.md explains each choice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from score_ray.evaluate import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CONFIDENCE,
    bootstrap_entries,
    is_right,
    paired_bootstrap,
)

Answer = str | None
"""An extracted answer; None when the completion has none (unparseable: no vote)."""
Agreement = Callable[[str, str], bool]
"""agree(a, b): whether the verifier, with `a` in the gold answer's seat, accepts `b`
(`score_ray.verify.scorers.answer_agreement`); agree(a, a) is False for an answer it cannot
score at all."""
PARALLEL = "parallel"
SEQUENTIAL = "sequential"
SEQUENTIAL_ATTEMPTS = 2
"""Attempts per chain in the sequential scheme: the paper's one self-correction."""
_SPACE = re.compile(r"\s+")


def normalize_answer(answer: Answer) -> Answer:
    """The vote key of an answer the verifier offers no equivalence for (code): case folded,
    runs of whitespace removed, a trailing full stop dropped, so that "1/2", " 1 / 2 " and
    "1/2." vote together. None (no answer) and an answer that normalises to nothing stay
    None: they cast no vote."""
    if answer is None:
        return None
    key = _SPACE.sub("", answer).casefold().rstrip(".")
    return key or None


def vote_keys(answers: Sequence[Answer], agree: Agreement | None = None) -> list[Answer]:
    """Each answer's vote key: answers with one key vote together (`majority_vote`).

    Without `agree` (code answers), the key is `normalize_answer`'s. With it, the verifier's
    notion decides: each distinct answer, in sample order, first must agree with itself (an
    answer the verifier cannot score at all casts no vote: key None), then joins the first earlier
    class whose representative (its first answer) it agrees with, or starts a class of its
    own; its key is the representative. An identical string reuses its key without a call,
    so agree runs at most d * (c + 1) times for d distinct answers in c classes. A call that
    raises counts as disagreement: model output is hostile and the vote must not crash.
    Equivalence that is not transitive (a numeric tolerance) is settled by sample order: an
    answer joins the first class it matches.

    Example, math (agree = math-verify): "0.5", "1/2", "\\frac{1}{2}", "2", "2.0" and an
    answer of 1001 characters (scored 0 unread) get keys "0.5", "0.5", "0.5", "2", "2", None.
    """
    if agree is None:
        return [normalize_answer(answer) for answer in answers]
    known: dict[str, Answer] = {}  # answer -> its key
    representatives: list[str] = []  # one per class, in sample order
    for answer in answers:
        if answer is not None and answer not in known:
            known[answer] = _class_of(answer, representatives, agree)
    return [None if answer is None else known[answer] for answer in answers]


def _class_of(answer: str, representatives: list[str], agree: Agreement) -> Answer:
    """`vote_keys`' step for one new distinct answer (appended if it starts a class)."""
    if not _agrees(agree, answer, answer):
        return None
    for representative in representatives:
        if _agrees(agree, representative, answer):
            return representative
    representatives.append(answer)
    return answer


def _agrees(agree: Agreement, a: str, b: str) -> bool:
    try:
        return bool(agree(a, b))
    except Exception:  # a scorer broken by a hostile answer: no match, never a crash
        return False


def majority_vote(keys: Sequence[Answer], rewards: Sequence[float]) -> float:
    """The reward of a majority vote over one problem's samples, in [0, 1].

    Each sample votes for its key (`vote_keys`: its normalised answer, or its class of
    answers the verifier counts as equal); samples with key None (no answer, or one the
    verifier cannot score) abstain, and with no vote at all the vote earns 0. The most
    frequent keys are the winners; a key is right in the share of its samples the verifier
    accepted (1 or 0 unless the key merged answers the verifier told apart). A tie between
    winners is broken uniformly at random in expectation: the vote earns the winners' mean,
    so the result does not depend on the samples' order.

    Example: keys (7, 7, 5, 5, None) with 7 right: a 2-2 tie between 7 and 5 earns 0.5.
    """
    if len(keys) != len(rewards):
        raise ValueError(f"{len(keys)} answers but {len(rewards)} rewards")
    by_key: dict[str, list[float]] = {}
    for key, reward in zip(keys, rewards, strict=True):
        if key is not None:
            by_key.setdefault(key, []).append(1.0 if is_right(reward) else 0.0)
    if not by_key:
        return 0.0
    top = max(len(votes) for votes in by_key.values())
    winners = [votes for votes in by_key.values() if len(votes) == top]
    return sum(sum(votes) / len(votes) for votes in winners) / len(winners)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are right (Chen et al. 2021, "Evaluating
    Large Language Models Trained on Code", eq. 1): the chance that k of the n samples,
    drawn without replacement, hold at least one right one,

        1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i),

    the product form avoiding huge binomials. Example: n = 4, c = 1, k = 2 gives
    1 - C(3, 2) / C(4, 2) = 1 - 3/6 = 0.5.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0  # every k-subset holds a right sample
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def sample_budgets(n: int) -> list[int]:
    """The sample budgets a curve is drawn at: powers of two up to n, and n itself."""
    if n < 1:
        raise ValueError(f"need at least one sample, got {n}")
    budgets = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return budgets if budgets[-1] == n else [*budgets, n]


def chains_for_budget(budget: int, attempts: int = SEQUENTIAL_ATTEMPTS) -> int:
    """How many first attempts a sequential budget affords: each is followed by
    `attempts - 1` corrections, so `budget // attempts` chains spend the whole budget.
    A budget that does not split evenly is refused, so both schemes spend the same."""
    if attempts < 1 or budget < attempts or budget % attempts:
        raise ValueError(
            f"a budget of {budget} samples does not split into {attempts}-attempt chains"
        )
    return budget // attempts


def majority_at_budget(keys: Sequence[Answer], rewards: Sequence[float], size: int) -> float:
    """Majority-vote reward with `size` samples, from the vote keys of len(keys) >= size
    i.i.d. samples: the mean vote over the len(keys) // size disjoint groups of consecutive
    samples (each group is an independent vote of that size, so the mean is unbiased and uses
    the samples that a single group would waste). Samples beyond the last whole group are
    left out."""
    groups = len(keys) // size if size >= 1 else 0
    if groups < 1:
        raise ValueError(f"need a group size in 1..{len(keys)}, got {size}")
    votes = [
        majority_vote(keys[g * size : (g + 1) * size], rewards[g * size : (g + 1) * size])
        for g in range(groups)
    ]
    return sum(votes) / groups


def curve_name(scheme: str, kind: str, budget: int) -> str:
    """The key of one curve point, e.g. "parallel/majority@8"."""
    return f"{scheme}/{kind}@{budget}"


def problem_curves(
    first: tuple[Sequence[Answer], Sequence[float]],
    revised: tuple[Sequence[Answer], Sequence[float]] | None,
    budgets: Sequence[int],
) -> dict[str, float]:
    """Every curve's value on one problem.

    first: the vote keys (`vote_keys`) and rewards of its N sampled first attempts;
    revised: those of the corrections of its first N/2 first attempts, or None (parallel
    only). At budget b: parallel majority over b first attempts and pass@b; sequential
    (b >= 2) majority over the b/2 corrected answers and pass@(b/2) over them.
    """
    keys, rewards = first
    right = sum(map(is_right, rewards))
    values: dict[str, float] = {}
    for budget in budgets:
        values[curve_name(PARALLEL, "majority", budget)] = majority_at_budget(keys, rewards, budget)
        values[curve_name(PARALLEL, "pass", budget)] = pass_at_k(len(rewards), right, budget)
    if revised is None:
        return values
    fixed_keys, fixed_rewards = revised
    fixed_right = sum(map(is_right, fixed_rewards))
    for budget in budgets:
        if budget < SEQUENTIAL_ATTEMPTS or budget % SEQUENTIAL_ATTEMPTS:
            continue
        chains = chains_for_budget(budget)
        values[curve_name(SEQUENTIAL, "majority", budget)] = majority_at_budget(
            fixed_keys, fixed_rewards, chains
        )
        values[curve_name(SEQUENTIAL, "pass", budget)] = pass_at_k(
            len(fixed_rewards), fixed_right, chains
        )
    return values


def mean_curves(problems: list[dict[str, float]]) -> dict[str, float]:
    """Each curve point's mean over problems (the bootstrap's statistic)."""
    if not problems:
        raise ValueError("no problems")
    return {name: sum(p[name] for p in problems) / len(problems) for name in problems[0]}


def scaling_summary(
    per_problem: list[dict[str, float]],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, dict[str, Any]]:
    """Every curve point's mean over problems with a paired percentile-bootstrap interval:
    {"parallel/majority@8": {"value", "ci", "method"}, ...}. A resample draws problems with
    all their curves, as `score_ray.evaluate.bootstrap_intervals` does with attempts."""
    intervals = paired_bootstrap(per_problem, mean_curves, resamples, seed, confidence)
    return bootstrap_entries(mean_curves(per_problem), intervals)


def curve(summary: dict[str, dict[str, Any]], scheme: str, kind: str) -> list[tuple[int, dict]]:
    """(budget, entry) of one curve in `scaling_summary`'s output, by budget."""
    prefix = f"{scheme}/{kind}@"
    points = [
        (int(name[len(prefix) :]), e) for name, e in summary.items() if name.startswith(prefix)
    ]
    return sorted(points, key=lambda point: point[0])


def format_scaling(summary: dict[str, dict[str, Any]], budgets: Sequence[int]) -> str:
    """A terminal table of `scaling_summary`'s output: one row per budget, majority vote
    [95% CI] and pass@b per scheme ("-" where a scheme has no point)."""
    columns = [
        (scheme, kind)
        for scheme in (PARALLEL, SEQUENTIAL)
        for kind in ("majority", "pass")
        if curve(summary, scheme, kind)
    ]
    header = ["budget", *(f"{scheme} {kind}" for scheme, kind in columns)]
    rows = []
    for budget in budgets:
        cells = [str(budget)]
        for scheme, kind in columns:
            entry = summary.get(curve_name(scheme, kind, budget))
            if entry is None:
                cells.append("-")
            else:
                low, high = entry["ci"]
                cells.append(f"{entry['value']:.3f} [{low:.3f}, {high:.3f}]")
        rows.append(cells)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )
