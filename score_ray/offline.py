"""The offline first-attempt pool (SCoRe paper, Sec. 5.3: base-model first attempts as extra
states for the second attempt).

Before the first update, the base model samples `train.samples_per_prompt` first attempts for
each of `train.offline_pool_size` training problems. A share `train.offline_attempt1_fraction`
of every step's prompts then takes its first attempts from this pool instead of the current
policy; their second attempts are sampled from the current policy and trained as usual, their
first attempts carry no loss (`algo.advantages.trace_advantages` gives them weight 0).

The pool lives in OUTPUT_DIR/offline_attempt1.jsonl, written once (atomically) and read back on
resume, so a resumed run continues from the same base-model attempts.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from score_ray.algo.traces import Attempt
from score_ray.tasks.base import Problem

POOL_FILE = "offline_attempt1.jsonl"


def offline_prompts_per_step(prompts_per_step: int, fraction: float) -> int:
    """How many of a step's prompts take their first attempts from the pool."""
    return round(prompts_per_step * fraction)


def pool_problems(train: list[Problem], size: int, seed: int) -> list[Problem]:
    """A seeded subset of `size` training problems (all of them if there are fewer)."""
    if size >= len(train):
        return list(train)
    return random.Random(seed).sample(train, size)


class OfflinePool:
    """Base-model first attempts per problem uid, with its own checkpointable draw order."""

    def __init__(self, problems: list[Problem], attempts: list[list[Attempt]], seed: int) -> None:
        if len(problems) != len(attempts):
            raise ValueError(f"{len(problems)} problems but {len(attempts)} attempt lists")
        self.problems = problems
        self.attempts = {p.uid: a for p, a in zip(problems, attempts, strict=True)}
        self.rng = random.Random(seed)
        self.order: list[int] = []

    def next_batch(self, size: int) -> tuple[list[Problem], list[list[Attempt]]]:
        """`size` pool problems (endless shuffled passes) and their first attempts."""
        picked = []
        while len(picked) < size:
            if not self.order:
                self.order = list(range(len(self.problems)))
                self.rng.shuffle(self.order)
            picked.append(self.problems[self.order.pop()])
        return picked, [self.attempts[p.uid] for p in picked]

    def state(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss], "order": list(self.order)}

    def load_state(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.order = list(state["order"])

    def save(self, path: Path) -> None:
        """Write the pool as one JSON row per problem, atomically (a killed write leaves no
        half pool behind)."""
        partial = path.with_suffix(".partial")
        with partial.open("w") as out:
            for problem in self.problems:
                row = {
                    "uid": problem.uid,
                    "attempts": [a.to_json() for a in self.attempts[problem.uid]],
                }
                out.write(json.dumps(row) + "\n")
        os.replace(partial, path)

    @classmethod
    def load(cls, path: Path, problems_by_uid: dict[str, Problem], seed: int) -> OfflinePool:
        problems, attempts = [], []
        for line_number, line in enumerate(path.read_text().splitlines(), 1):
            row = json.loads(line)
            if row["uid"] not in problems_by_uid:
                raise ValueError(
                    f"{path}:{line_number}: problem {row['uid']} is not in this run's training "
                    "split (the task config changed since the pool was sampled)"
                )
            problems.append(problems_by_uid[row["uid"]])
            attempts.append([Attempt.from_json(a) for a in row["attempts"]])
        return cls(problems, attempts, seed)
