"""Self-correction evaluation (SCoRe paper, Sec. 3): metrics, their statistics, K attempts.

    self_correction_metrics(r1, r2)  Acc@t1, Acc@t2 and the deltas from per-problem rewards
    attempt_metrics(rewards)         the same for K >= 2 attempts, plus acc_tk for k > 2
    bootstrap_intervals(rewards)     paired percentile bootstrap CI of every metric
    clopper_pearson(k, n)            exact binomial CI (for i->c and c->i, often 0 or 1)
    mcnemar_exact(b, c)              exact two-sided test of Delta(t1,t2) = 0
    summarize(rewards)               all three: {metric: {"value", "ci", "method", ...}}
    change_summary(base, trained)    trained - base per metric, paired bootstrap CI over
                                     the problems both evaluations share
    run_attempts(prompts, K, ...)    drive K attempts: attempt k+1 continues the whole
                                     conversation so far + bridge (the correction turn)

docs/evaluation_statistics.md says what each interval and test is, and why.

Everything here is pure Python: `run_attempts` takes the sampler as a callable, so the
same loop drives a RolloutGroup (`score-ray eval`) or an in-process vLLM engine
(`benchmarks/task_search.py`), and unit tests drive it with a fake.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

Completion = tuple[list[int], str]
"""One generated attempt: (token ids, text)."""
Sampler = Callable[[list[list[int]]], list[Completion]]
"""Token-id prompts -> one completion per prompt, in order."""
Rewards = Sequence[Sequence[float]]
"""`rewards[k][i]`: reward of attempt k+1 on problem i."""
Item = TypeVar("Item")

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
BOOTSTRAP = "paired percentile bootstrap"
CLOPPER_PEARSON = "clopper-pearson"
"""The `method` an eval.json entry names for its `ci`."""
_BISECTION_STEPS = 60
"""Halvings of [0, 1]: 2**-60 is below float resolution near any interval end we report."""


def is_right(reward: float) -> bool:
    """A problem counts as solved only with full reward (the verifier's 1.0)."""
    return reward >= 1.0


def discordant_counts(r1: Sequence[float], r2: Sequence[float]) -> tuple[int, int]:
    """(i2c, c2i): problems wrong at t1 and right at t2 (fixed), and right at t1 and wrong
    at t2 (broken). They are McNemar's discordant pairs b and c."""
    pairs = [(is_right(a), is_right(b)) for a, b in zip(r1, r2, strict=True)]
    return sum(b and not a for a, b in pairs), sum(a and not b for a, b in pairs)


def self_correction_metrics(r1: Sequence[float], r2: Sequence[float]) -> dict[str, float]:
    """From per-problem binary rewards of attempt 1 and attempt 2:

    acc_t1, acc_t2   accuracy of each attempt
    delta            acc_t2 - acc_t1
    delta_i2c        share of problems wrong at t1 and right at t2 (fixed)
    delta_c2i        share of problems right at t1 and wrong at t2 (broken)
    """
    if len(r1) != len(r2) or not r1:
        raise ValueError(f"need equal, non-empty reward lists, got {len(r1)} and {len(r2)}")
    n = len(r1)
    acc_t1 = sum(map(is_right, r1)) / n
    acc_t2 = sum(map(is_right, r2)) / n
    i2c, c2i = discordant_counts(r1, r2)
    return {
        "acc_t1": acc_t1,
        "acc_t2": acc_t2,
        "delta": acc_t2 - acc_t1,
        "delta_i2c": i2c / n,
        "delta_c2i": c2i / n,
    }


def attempt_metrics(rewards: Rewards) -> dict[str, float]:
    """`rewards[k][i]`: reward of attempt k+1 on problem i (K >= 2 attempts).

    The SCoRe metrics compare attempts 1 and 2; later attempts add `acc_t3`, `acc_t4`, ...
    """
    if len(rewards) < 2:
        raise ValueError(f"need at least 2 attempts, got {len(rewards)}")
    metrics = self_correction_metrics(rewards[0], rewards[1])
    for k, row in enumerate(rewards[2:], start=3):
        if len(row) != len(rewards[0]):
            raise ValueError(f"attempt {k} has {len(row)} rewards, attempt 1 {len(rewards[0])}")
        metrics[f"acc_t{k}"] = sum(map(is_right, row)) / len(row)
    return metrics


def paired_bootstrap(
    items: Sequence[Item],
    statistic: Callable[[list[Item]], dict[str, float]],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap interval (Efron & Tibshirani 1993, ch. 13) of every value that
    `statistic` computes from a list of problems.

    Each resample draws len(items) items with replacement; an item is everything measured
    on one problem (all its attempts, or a base and a trained evaluation of it), kept
    together, so the interval of a difference reflects the correlation of its two sides
    (paired). Interval ends are the (1 - confidence)/2 and (1 + confidence)/2 quantiles of
    the resampled values. Deterministic for a given seed.
    """
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(
            f"need resamples >= 1 and 0 < confidence < 1, got {resamples}, {confidence}"
        )
    n = len(items)
    names = list(statistic(list(items)))  # also validates the items
    rng = random.Random(seed)
    draws: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(resamples):
        picked = [items[rng.randrange(n)] for _ in range(n)]
        for name, value in statistic(picked).items():
            draws[name].append(value)
    tail = (1.0 - confidence) / 2.0
    return {name: (quantile(v, tail), quantile(v, 1.0 - tail)) for name, v in draws.items()}


def transpose(rows: Sequence[Sequence[float]]) -> list[tuple[float, ...]]:
    """rewards[k][i] -> columns[i][k] (all attempts of problem i: the bootstrap's unit),
    and back."""
    return list(zip(*rows, strict=True))


def columns_metrics(columns: Sequence[Sequence[float]]) -> dict[str, float]:
    """`attempt_metrics` of problems given as columns (columns[i][k])."""
    return attempt_metrics(transpose(columns))


def bootstrap_intervals(
    rewards: Rewards,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, tuple[float, float]]:
    """Paired percentile-bootstrap interval of every `attempt_metrics` value.

    All attempts of a drawn problem stay together, so e.g. identical attempts give delta's
    interval (0, 0) whatever the accuracy.
    """
    attempt_metrics(rewards)  # validates the shape before the columns are built
    return paired_bootstrap(transpose(rewards), columns_metrics, resamples, seed, confidence)


def rank_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of `scores` for telling `labels` True from False: the chance
    that a random positive scores above a random negative, ties counting 1/2 (the
    Mann-Whitney U statistic over n_pos * n_neg; Hanley & McNeil 1982). 0.5 is chance."""
    positives = [s for s, label in zip(scores, labels, strict=True) if label]
    negatives = [s for s, label in zip(scores, labels, strict=True) if not label]
    if not positives or not negatives:
        raise ValueError("AUC needs at least one positive and one negative")
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P[X <= k] for X ~ Binomial(n, p), summed exactly term by term.

    Each term C(n, i) p^i (1-p)^(n-i) is formed in log space, so n in the thousands neither
    overflows C(n, i) nor underflows p^i; `math.fsum` keeps the sum exact to rounding.
    """
    if n < 0 or not 0.0 <= p <= 1.0:
        raise ValueError(f"need n >= 0 and 0 <= p <= 1, got n={n}, p={p}")
    if k < 0:
        return 0.0
    if k >= n or p == 0.0:
        return 1.0
    if p == 1.0:
        return 0.0
    log_p, log_q, log_n = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    return math.fsum(
        math.exp(log_n - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q)
        for i in range(k + 1)
    )


def _solve_decreasing(f: Callable[[float], float], target: float) -> float:
    """The p in [0, 1] with f(p) = target, for f decreasing in p, by bisection."""
    low, high = 0.0, 1.0
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2.0
        if f(middle) > target:
            low = middle
        else:
            high = middle
    return (low + high) / 2.0


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact binomial interval for the proportion k/n (Clopper & Pearson 1934).

    With tail = (1 - confidence)/2, the ends are the proportions p at which the observed
    count is just extreme enough:

        lower: P[X >= k | n, p] = tail     (0 when k = 0)
        upper: P[X <= k | n, p] = tail     (1 when k = n)

    the same as the Beta(tail; k, n-k+1) and Beta(1-tail; k+1, n-k) quantiles. Its coverage
    is at least `confidence` for every p, and a zero count still gets an upper end above 0:
    0 of 10 gives [0, 1 - 0.025**(1/10)] = [0, 0.3085], where a percentile bootstrap gives
    [0, 0] because no resample can contain a case the sample lacks.
    """
    if n < 1 or not 0 <= k <= n or not 0 < confidence < 1:
        raise ValueError(
            f"need 0 <= k <= n, n >= 1, 0 < confidence < 1; got {k}, {n}, {confidence}"
        )
    tail = (1.0 - confidence) / 2.0
    # P[X >= k] = 1 - P[X <= k-1] grows with p, so P[X <= k-1] falls to 1 - tail at `lower`.
    lower = 0.0 if k == 0 else _solve_decreasing(lambda p: binomial_cdf(k - 1, n, p), 1.0 - tail)
    upper = 1.0 if k == n else _solve_decreasing(lambda p: binomial_cdf(k, n, p), tail)
    return lower, upper


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar test (McNemar 1947, exact binomial form) of Delta(t1,t2) = 0.

    b = #i->c and c = #c->i are the discordant problems; the concordant ones say nothing
    about which attempt is better. Under the null, given b + c, each discordant problem is
    i->c or c->i with probability 1/2, so b ~ Binomial(b + c, 1/2) and

        p = min(1, 2 * P[X <= min(b, c)]),   p = 1 when b + c = 0.

    Example: b = 5, c = 0 gives p = 2 * (1/2)**5 = 0.0625, not significant at 0.05.
    """
    if b < 0 or c < 0:
        raise ValueError(f"counts must be >= 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    return min(1.0, 2.0 * binomial_cdf(min(b, c), b + c, 0.5))


def summarize(
    rewards: Rewards,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, dict[str, Any]]:
    """Every metric with its interval, for eval.json: {name: {"value", "ci", "method", ...}}.

    acc_tk, delta         paired percentile bootstrap ("method": BOOTSTRAP)
    delta                 also "mcnemar_p" (`mcnemar_exact`) and its counts "i2c", "c2i"
    delta_i2c, delta_c2i  Clopper-Pearson ("method": CLOPPER_PEARSON) and their "count":
                          counts of fixes and breaks are often 0-10 of hundreds, where a
                          bootstrap interval collapses toward [0, 0]
    """
    intervals = bootstrap_intervals(rewards, resamples, seed, confidence)
    summary = bootstrap_entries(attempt_metrics(rewards), intervals)
    n = len(rewards[0])
    i2c, c2i = discordant_counts(rewards[0], rewards[1])
    for name, count in (("delta_i2c", i2c), ("delta_c2i", c2i)):
        exact = {"ci": list(clopper_pearson(count, n, confidence)), "method": CLOPPER_PEARSON}
        summary[name].update(exact, count=count)
    summary["delta"].update(mcnemar_p=mcnemar_exact(i2c, c2i), i2c=i2c, c2i=c2i)
    return summary


def metrics_change(base: Rewards, trained: Rewards) -> dict[str, float]:
    """trained - base for every metric both evaluations have; problem i is the same
    problem in both (the attempt counts may differ)."""
    before, after = attempt_metrics(base), attempt_metrics(trained)
    return {name: after[name] - before[name] for name in after if name in before}


def change_summary(
    base: Rewards,
    trained: Rewards,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, dict[str, Any]]:
    """The change of every metric from a base to a trained evaluation of the same problems,
    with a paired percentile-bootstrap interval: {name: {"value", "ci", "method"}}.

    Problem i must be the same problem in `base` and `trained` (align them by uid first).
    A resample draws problems, each with its base and its trained attempts together, so the
    interval reflects that both models met the same problems: identical evaluations give
    the change 0 with the interval [0, 0].
    """
    if len(base[0]) != len(trained[0]):
        raise ValueError(f"need the same problems, got {len(base[0])} and {len(trained[0])}")
    items = list(zip(transpose(base), transpose(trained), strict=True))

    def change(picked: list[tuple[tuple[float, ...], tuple[float, ...]]]) -> dict[str, float]:
        return metrics_change(transpose([b for b, _ in picked]), transpose([t for _, t in picked]))

    intervals = paired_bootstrap(items, change, resamples, seed, confidence)
    return bootstrap_entries(metrics_change(base, trained), intervals)


def bootstrap_entries(
    values: dict[str, float], intervals: dict[str, tuple[float, float]]
) -> dict[str, dict[str, Any]]:
    """eval.json's entry for each value: {"value", "ci", "method": BOOTSTRAP}."""
    return {
        name: {"value": value, "ci": list(intervals[name]), "method": BOOTSTRAP}
        for name, value in values.items()
    }


def format_p(p: float) -> str:
    """A p-value for tables: four decimals, or scientific notation below 1e-4."""
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def interval_note(entry: dict[str, Any], n: int) -> str:
    """How an eval.json entry's interval was made, and McNemar's test where there is one.
    Entries written before these fields existed (bootstrap only) read as bootstrap."""
    if entry.get("method") == CLOPPER_PEARSON:
        note = f"exact (Clopper-Pearson), {entry['count']} of {n}"
    else:
        note = "bootstrap"
    if "mcnemar_p" in entry:
        note += (
            f"; McNemar exact p = {format_p(entry['mcnemar_p'])}"
            f" (i->c {entry['i2c']}, c->i {entry['c2i']})"
        )
    return note


def format_summary(summary: dict[str, dict[str, Any]], n: int) -> str:
    """A terminal table of `summarize`'s output."""
    lines = [f"{'metric':<10} {'value':>7}   {'95% CI':<18} (n = {n})"]
    for name, entry in summary.items():
        low, high = entry["ci"]
        sign = "+" if name.startswith("delta") else ""
        interval = f"[{low:{sign}.3f}, {high:{sign}.3f}]"
        lines.append(
            f"{name:<10} {entry['value']:>{sign}7.3f}   {interval:<18} {interval_note(entry, n)}"
        )
    return "\n".join(lines)


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile of `values`, interpolating linearly between order statistics
    (numpy's default "linear" method): position q * (n - 1) in the sorted values."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class AttemptRun:
    """The outcome of `run_attempts` for one problem."""

    prompt_ids: list[int]
    """Attempt-1 prompt (x1)."""
    completions: list[Completion]
    """One (token ids, text) per attempt, in order."""
    context_ids: list[int]
    """The whole conversation: x1 + y1 + bridge + y2 + ... + y_K."""


def run_attempts(
    first_prompts: list[list[int]],
    attempts: int,
    sample: Sampler,
    bridge: Callable[[list[int]], list[int]],
) -> list[AttemptRun]:
    """Generate `attempts` attempts per prompt, one batched `sample` call per attempt.

    Attempt k+1's prompt is the conversation so far plus `bridge(y_k)`, the token ids that
    close attempt k's turn and add the correction instruction (`PromptBuilder.bridge_ids`):
    the same splice as the trainer's two-attempt traces, repeated.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    runs = [AttemptRun(list(p), [], list(p)) for p in first_prompts]
    for attempt in range(attempts):
        prompts = [
            run.context_ids if attempt == 0 else run.context_ids + bridge(run.completions[-1][0])
            for run in runs
        ]
        outputs = sample(prompts)
        if len(outputs) != len(runs):
            raise ValueError(f"sampler returned {len(outputs)} completions for {len(runs)}")
        for run, prompt, (ids, text) in zip(runs, prompts, outputs, strict=True):
            run.completions.append((list(ids), text))
            run.context_ids = prompt + list(ids)
    return runs
