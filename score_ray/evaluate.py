"""Self-correction evaluation (SCoRe paper, Sec. 3): metrics, bootstrap intervals, K attempts.

    self_correction_metrics(r1, r2)  Acc@t1, Acc@t2 and the deltas from per-problem rewards
    attempt_metrics(rewards)         the same for K >= 2 attempts, plus acc_tk for k > 2
    bootstrap_intervals(rewards)     paired percentile bootstrap CI of every metric
    summarize(rewards)               both: {metric: {"value", "ci"}}, for eval.json
    run_attempts(prompts, K, ...)    drive K attempts: attempt k+1 continues the whole
                                     conversation so far + bridge (the correction turn)

Everything here is pure Python: `run_attempts` takes the sampler as a callable, so the
same loop drives a RolloutGroup (`score-ray eval`) or an in-process vLLM engine
(`benchmarks/task_search.py`), and unit tests drive it with a fake.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Completion = tuple[list[int], str]
"""One generated attempt: (token ids, text)."""
Sampler = Callable[[list[list[int]]], list[Completion]]
"""Token-id prompts -> one completion per prompt, in order."""

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


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
    right1 = [r >= 1.0 for r in r1]
    right2 = [r >= 1.0 for r in r2]
    acc_t1 = sum(right1) / n
    acc_t2 = sum(right2) / n
    return {
        "acc_t1": acc_t1,
        "acc_t2": acc_t2,
        "delta": acc_t2 - acc_t1,
        "delta_i2c": sum((not a) and b for a, b in zip(right1, right2, strict=True)) / n,
        "delta_c2i": sum(a and (not b) for a, b in zip(right1, right2, strict=True)) / n,
    }


def attempt_metrics(rewards: Sequence[Sequence[float]]) -> dict[str, float]:
    """`rewards[k][i]`: reward of attempt k+1 on problem i (K >= 2 attempts).

    The SCoRe metrics compare attempts 1 and 2; later attempts add `acc_t3`, `acc_t4`, ...
    """
    if len(rewards) < 2:
        raise ValueError(f"need at least 2 attempts, got {len(rewards)}")
    metrics = self_correction_metrics(rewards[0], rewards[1])
    for k, row in enumerate(rewards[2:], start=3):
        if len(row) != len(rewards[0]):
            raise ValueError(f"attempt {k} has {len(row)} rewards, attempt 1 {len(rewards[0])}")
        metrics[f"acc_t{k}"] = sum(r >= 1.0 for r in row) / len(row)
    return metrics


def bootstrap_intervals(
    rewards: Sequence[Sequence[float]],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, tuple[float, float]]:
    """Paired percentile-bootstrap interval of every `attempt_metrics` value.

    Each resample draws n problem indices with replacement and keeps all attempts of a drawn
    problem together (paired), so e.g. the interval of `delta` reflects the correlation of the
    two attempts: identical attempts give delta's interval (0, 0) whatever the accuracy.
    Interval ends are the (1 - confidence)/2 and (1 + confidence)/2 quantiles of the resampled
    values (linear interpolation between order statistics). Deterministic for a given seed.
    """
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(
            f"need resamples >= 1 and 0 < confidence < 1, got {resamples}, {confidence}"
        )
    names = list(attempt_metrics(rewards))  # also validates the shape
    n = len(rewards[0])
    columns = list(zip(*rewards, strict=True))  # columns[i]: all attempts of problem i
    rng = random.Random(seed)
    draws: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(resamples):
        picked = [columns[rng.randrange(n)] for _ in range(n)]
        for name, value in attempt_metrics(list(zip(*picked, strict=True))).items():
            draws[name].append(value)
    tail = (1.0 - confidence) / 2.0
    return {name: (quantile(v, tail), quantile(v, 1.0 - tail)) for name, v in draws.items()}


def summarize(
    rewards: Sequence[Sequence[float]],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, dict[str, float | list[float]]]:
    """Every metric with its paired-bootstrap interval: {name: {"value": v, "ci": [lo, hi]}}."""
    intervals = bootstrap_intervals(rewards, resamples, seed, confidence)
    return {
        name: {"value": value, "ci": list(intervals[name])}
        for name, value in attempt_metrics(rewards).items()
    }


def format_summary(summary: dict[str, dict[str, float | list[float]]], n: int) -> str:
    """A terminal table of `summarize`'s output."""
    lines = [f"{'metric':<10} {'value':>7}   95% CI        (n = {n})"]
    for name, entry in summary.items():
        low, high = entry["ci"]  # type: ignore[misc]
        sign = "+" if name.startswith("delta") else ""
        lines.append(
            f"{name:<10} {entry['value']:>{sign}7.3f}   [{low:{sign}.3f}, {high:{sign}.3f}]"
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
