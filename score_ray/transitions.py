"""Where a self-correction signal comes from: fixes, breaks and changed answers.

SCoRe can only learn to correct if some sampled second attempts fix a wrong first attempt;
a second attempt that copies the first can neither fix nor break. These pure functions
count both, per training step (`Trainer.step`) and per evaluation (`score-ray eval`).
"""

from __future__ import annotations

from collections.abc import Sequence


def transition_counts(r1: Sequence[float], r2: Sequence[float]) -> dict[str, int]:
    """fixes (wrong -> right, i->c), breaks (right -> wrong, c->i) and the number of wrong
    first attempts, from binary rewards of the two attempts."""
    if len(r1) != len(r2):
        raise ValueError(f"need equal reward lists, got {len(r1)} and {len(r2)}")
    right1 = [r >= 1.0 for r in r1]
    right2 = [r >= 1.0 for r in r2]
    return {
        "fixes": sum((not a) and b for a, b in zip(right1, right2, strict=True)),
        "breaks": sum(a and (not b) for a, b in zip(right1, right2, strict=True)),
        "wrong1": sum(not a for a in right1),
    }


def answer_change_metrics(
    answers1: Sequence[str | None],
    answers2: Sequence[str | None],
    r1: Sequence[float],
) -> dict[str, float]:
    """Share of traces whose second extracted answer differs from the first, over all traces
    (answer_changed) and over those with a wrong first attempt (answer_changed_wrong1; 0 when
    there is none). A missing answer (None) differs from any present one."""
    if not len(answers1) == len(answers2) == len(r1):
        raise ValueError(
            f"need equal lengths: {len(answers1)}, {len(answers2)} answers, {len(r1)} rewards"
        )
    changed = [a != b for a, b in zip(answers1, answers2, strict=True)]
    wrong = [r < 1.0 for r in r1]
    changed_wrong = sum(c and w for c, w in zip(changed, wrong, strict=True))
    return {
        "answer_changed": sum(changed) / max(len(changed), 1),
        "answer_changed_wrong1": changed_wrong / max(sum(wrong), 1),
    }
