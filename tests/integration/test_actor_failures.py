"""Actors killed in the middle of a run: training goes on and restarts are counted.

A watcher thread kills, after step 1, a rollout worker; after step 2, a verifier;
after step 3, a learner rank. The rollout worker and the verifier are replaced in
their groups (the new rollout worker receives the current weights); the learner
failure rolls the run back to the newest checkpoint. The run must finish with
every step logged exactly once.

With one-step-off rollout (`train.max_staleness=1`) the rollout worker dies while it may be
generating the next step in the background, and the learner rollback drops the rollout in
flight and replays the checkpoint's, relabelled to the rebuilt run's weight versions: no
trace may then count as older than the bound.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import ray

from score_ray.launch import prepare_inputs
from score_ray.trainer import Trainer
from tests.integration.conftest import tiny_config


def _logged_steps(path) -> set[int]:
    if not path.exists():
        return set()
    steps = set()
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "eval" not in record:
            steps.add(record["step"])
    return steps


@pytest.mark.parametrize("mode", [[], ["train.max_staleness=1"]], ids=["sync", "one_step_off"])
def test_run_survives_rollout_verifier_and_learner_deaths(ray_local, tmp_path, mode):
    cfg = tiny_config(
        tmp_path,
        "train.stage1_steps=3",
        "train.stage2_steps=2",
        "train.checkpoint_every=1",
        "train.eval_max_problems=2",
        *mode,
    )
    model_path, train, held_out = prepare_inputs(cfg)
    trainer = Trainer(cfg, model_path, train, held_out)
    metrics = tmp_path / "metrics.jsonl"
    killed: list[str] = []

    def kill_after(step: int, what: str, handle_of) -> None:
        while step not in _logged_steps(metrics):
            time.sleep(0.2)
        ray.kill(handle_of(), no_restart=True)
        killed.append(what)

    def watcher() -> None:
        kill_after(1, "rollout", lambda: trainer.actors.rollout.workers[0])
        kill_after(2, "verifier", lambda: trainer.actors.verifiers.actors[0])
        kill_after(3, "learner", lambda: trainer.actors.learner.ranks[0])

    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    final = trainer.run()
    thread.join(timeout=5)
    trainer.actors.shutdown()

    assert killed == ["rollout", "verifier", "learner"]
    records = [json.loads(x) for x in metrics.read_text().splitlines()]
    steps = [r for r in records if "eval" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]
    assert [r["stage"] for r in steps] == [1, 1, 1, 2, 2]
    last = steps[-1]
    assert last["restarts/rollout"] >= 1
    assert last["restarts/verifier"] >= 1
    assert last["restarts/learner"] == 1
    versions = [r["weight_version"] for r in steps]
    assert versions == sorted(set(versions)), "weight versions must keep rising"
    assert all(r["rollout/stale_dropped"] == 0 for r in steps)
    assert max(r["rollout/staleness"] for r in steps) == cfg.train.max_staleness
    assert 0.0 <= final["acc_t1"] <= 1.0
