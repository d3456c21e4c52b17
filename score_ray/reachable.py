"""Flip-reachable filtering of the training problems (issue 13, mechanism 6).

A second attempt can only be taught to fix what the model sometimes gets right. Problems the
base model always solves give Stage II nothing to fix, and problems it never solves give it
nothing to reinforce: there, every sampled revision is wrong and every RLOO advantage is 0.
With `train.reachable_samples` = k > 0, before the first update the base model samples k
first attempts (at attempt 1's temperature) for `train.reachable_pool_size` training
problems, and training draws only from those it solved in some but not all of them:
0 < solved < k. Only training problems are probed, never dev or held-out ones.

The per-problem counts are written once (atomically) to OUTPUT_DIR/reachable_problems.json
and read back on resume, so a resumed run trains on the same problems.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from score_ray.tasks.base import Problem

FILTER_FILE = "reachable_problems.json"


def solved_counts(rewards: list[float], samples: int) -> list[int]:
    """Right first attempts per problem, from `samples` binary rewards per problem laid out
    problem-major: [r(p0, s0), r(p0, s1), ..., r(p1, s0), ...]."""
    if samples < 1 or len(rewards) % samples:
        raise ValueError(
            f"{len(rewards)} rewards are not a whole number of {samples}-sample groups"
        )
    return [
        sum(1 for reward in rewards[start : start + samples] if reward > 0)
        for start in range(0, len(rewards), samples)
    ]


def is_reachable(solved: int, samples: int) -> bool:
    """Solved sometimes but not always: the only problems a revision can fix and RLOO can see."""
    return 0 < solved < samples


def reachable_problems(
    problems: list[Problem], solved: dict[str, int], samples: int
) -> list[Problem]:
    """The problems (in their order) whose solve count over `samples` is reachable."""
    return [p for p in problems if p.uid in solved and is_reachable(solved[p.uid], samples)]


def save_counts(path: Path, solved: dict[str, int], samples: int) -> None:
    """Write the probe's solve counts, atomically (a killed write leaves no half file)."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"samples": samples, "solved": solved}, indent=1) + "\n")
    os.replace(partial, path)


def load_counts(path: Path, train_uids: set[str], samples: int) -> dict[str, int]:
    """Read back a run's solve counts; refuse ones from another task or another k."""
    row = json.loads(path.read_text())
    if row["samples"] != samples:
        raise ValueError(
            f"{path}: probed with {row['samples']} samples per problem, but "
            f"train.reachable_samples is {samples} (the config changed since the probe)"
        )
    unknown = sorted(set(row["solved"]) - train_uids)
    if unknown:
        raise ValueError(
            f"{path}: problem {unknown[0]} is not in this run's training split "
            "(the task config changed since the probe)"
        )
    return {uid: int(count) for uid, count in row["solved"].items()}
