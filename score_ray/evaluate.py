"""Self-correction metrics of the SCoRe paper (Sec. 3): Acc@t1, Acc@t2 and the deltas."""

from __future__ import annotations

from collections.abc import Sequence


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
