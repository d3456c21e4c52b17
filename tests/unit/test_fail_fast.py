"""Weight sync fails fast, and the trainer recovers (no Ray, no GPU).

The GPU transports run under `sync.timeout_s`: a fake peer that stops answering must fail
the sync within the deadline, naming its role; a rollout worker that dies under nccl cannot
rejoin the group and says so. The driver loop, on fake actor groups, must then rebuild
both groups and continue from the newest checkpoint, or from the base model when there is
none yet, logging every step exactly once.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import score_ray.trainer as trainer_module
from score_ray.checkpoint import learner_dir, staged_write
from score_ray.config import ConfigError, load_config
from score_ray.learner.group import LearnerFailure
from score_ray.rollout.group import RolloutGroup
from score_ray.sync import connect_weight_transport, sync_weights
from score_ray.tasks.base import Problem
from score_ray.transport import WeightHandle, WeightSyncError, run_concurrently
from tests.unit.test_sync import COLOCATED, GPU, FakeLearner, FakeRollout

DEADLINE = ["sync.timeout_s=0.3"]


class SilentRollout(FakeRollout):
    """A rollout whose workers stop answering once a sync (or the set-up) begins."""

    def __init__(self, log: list) -> None:
        super().__init__(log)
        self.never = threading.Event()

    def update_weights(self, handle):
        self.log.append(("update", handle.version, handle.transport))
        self.never.wait()

    def init_weight_transport(self, infos):
        self.never.wait()


class SilentLearner(FakeLearner):
    """A learner whose rank 0 hangs while sending (a CUDA IPC export, an NCCL broadcast)."""

    def send_weights(self, version):
        self.log.append(("send", version))
        threading.Event().wait()


def _fails_fast(call, role: str) -> WeightSyncError:
    started = time.monotonic()
    with pytest.raises(WeightSyncError) as caught:
        call()
    assert time.monotonic() - started < 3, "the deadline was not kept"
    assert caught.value.role == role
    assert role in str(caught.value) and "sync.timeout_s=0.3" in str(caught.value)
    return caught.value


def test_nccl_sync_whose_receivers_stop_answering_fails_naming_them():
    log: list = []
    cfg = load_config(None, [*GPU, *DEADLINE])
    error = _fails_fast(
        lambda: sync_weights(FakeLearner(cfg, log), SilentRollout(log), 1), "rollout"
    )
    assert "nccl weight sync of version 1" in str(error)


def test_nccl_broadcast_stuck_on_both_sides_names_both():
    log: list = []
    cfg = load_config(None, [*GPU, *DEADLINE])
    _fails_fast(
        lambda: sync_weights(SilentLearner(cfg, log), SilentRollout(log), 1), "learner and rollout"
    )


def test_cuda_ipc_export_that_hangs_fails_naming_the_learner_and_loads_nothing():
    log: list = []
    cfg = load_config(None, [*COLOCATED, *DEADLINE])
    _fails_fast(lambda: sync_weights(SilentLearner(cfg, log), FakeRollout(log), 1), "learner")
    assert not any(entry[0] == "update" for entry in log)


def test_nccl_set_up_whose_receivers_never_join_fails_naming_them():
    log: list = []
    cfg = load_config(None, [*GPU, *DEADLINE])
    _fails_fast(
        lambda: connect_weight_transport(FakeLearner(cfg, log), SilentRollout(log)), "rollout"
    )


def test_object_store_sync_has_no_deadline():
    """A slow object-store sync (a replacement worker starting) is no failure."""
    log: list = []
    cfg = load_config(None, DEADLINE)

    class SlowRollout(FakeRollout):
        def update_weights(self, handle):
            time.sleep(0.6)
            return super().update_weights(handle)

    assert sync_weights(FakeLearner(cfg, log), SlowRollout(log), 1).version == 1


def test_run_concurrently_without_a_deadline_still_returns_results_in_order():
    assert run_concurrently(lambda: 1, lambda: 2, timeout_s=None) == [1, 2]


def test_a_dead_rollout_worker_under_nccl_raises_a_sync_error_naming_it():
    group = RolloutGroup.__new__(RolloutGroup)  # no actors: only the decision is tested
    group.cfg = load_config(None, GPU)
    with pytest.raises(WeightSyncError, match=r"rollout worker 1 died.*nccl") as caught:
        group._replace(1)
    assert caught.value.role == "rollout worker 1"


def test_sync_timeout_must_be_positive():
    with pytest.raises(ConfigError, match=r"sync\.timeout_s: must be > 0"):
        load_config(None, ["sync.timeout_s=0"])


# -- The trainer's recovery, on fake actor groups ------------------------------------------------


class _Group:
    """What the trainer needs of a LearnerGroup / RolloutGroup / VerifierPool."""

    made: dict[str, list[_Group]]

    def __init__(self, role: str, *args) -> None:
        self.role, self.alive, self.loaded = role, True, []
        self.versions = [0]
        self.restarts = 0
        _Group.made.setdefault(role, []).append(self)

    def shutdown(self) -> None:
        self.alive = False

    # learner
    def save_checkpoint(self, directory: str) -> None:
        with staged_write(directory) as local:
            Path(local).mkdir(parents=True, exist_ok=True)
            (Path(local) / "state.bin").write_bytes(b"s")

    def load_checkpoint(self, directory: str) -> None:
        self.loaded.append(directory)

    def save_pretrained(self, path: str) -> None:
        Path(path).mkdir(parents=True)

    # rollout
    def weight_versions(self) -> list[int]:
        return self.versions


@pytest.fixture
def fake_cluster(monkeypatch):
    """Replace Ray, the actor groups and the sync with in-process fakes."""
    _Group.made = {}
    synced: list[tuple[int, int]] = []  # (learner group number, version)

    def fake_sync(learner, rollout, version):
        assert learner.alive and rollout.alive
        rollout.versions = [version]
        synced.append((len(_Group.made["learner"]), version))
        return WeightHandle(version, "fake", None, 0, 0)

    placement = SimpleNamespace(remove=lambda: None)
    monkeypatch.setattr(trainer_module, "reserve", lambda cfg, timeout: placement)
    for name, role in (("RolloutGroup", "rollout"), ("LearnerGroup", "learner")):
        monkeypatch.setattr(trainer_module, name, lambda *a, role=role: _Group(role, *a))
    monkeypatch.setattr(trainer_module, "VerifierPool", lambda *a: _Group("verifier", *a))
    monkeypatch.setattr(trainer_module, "connect_weight_transport", lambda learner, rollout: None)
    monkeypatch.setattr(trainer_module, "sync_weights", fake_sync)
    # No GPU whose release to wait for (test_gpu_paths.py checks where recovery waits).
    monkeypatch.setattr(trainer_module, "wait_for_gpu_release", lambda *a: None)
    monkeypatch.setattr(
        trainer_module, "load_tokenizer", lambda path: SimpleNamespace(pad_token_id=0)
    )
    return synced


def _run_with_a_failure(tmp_path, failure: Exception, fail_at: int, *overrides: str):
    """A 4-step run (2 + 2) whose step `fail_at` raises `failure` once; returns the trainer,
    the problems each executed step drew, and the logged records."""
    cfg = load_config(
        None,
        [
            *GPU,
            f"output_dir={tmp_path / 'run'}",
            "train.stage1_steps=2",
            "train.stage2_steps=2",
            "train.prompts_per_step=2",
            *overrides,
        ],
    )
    problems = [Problem(f"p{i}", f"q{i}", "a") for i in range(12)]
    trainer = trainer_module.Trainer(cfg, "model", problems, problems[:2])
    drawn: list[tuple[int, list[str]]] = []
    failed = []

    def step(stage: int) -> dict:
        trainer.global_step += 1
        batch = trainer.sampler.next_batch(cfg.train.prompts_per_step)
        drawn.append((trainer.global_step, [p.uid for p in batch]))
        if trainer.global_step == fail_at and not failed:
            failed.append(True)
            raise failure
        trainer.version += 1
        trainer_module.sync_weights(trainer.actors.learner, trainer.actors.rollout, trainer.version)
        record = {
            "stage": stage,
            "step": trainer.global_step,
            "weight_version": trainer.version,
            "restarts/learner": trainer.learner_restarts,
        }
        trainer.metrics.log(record, trainer.global_step)
        return {"reward/attempt1": 0.0, "reward/attempt2": 0.0, "loss": 0.0}

    def evaluate(tag: str) -> dict:
        trainer.metrics.log({"eval": tag, "step": trainer.global_step}, trainer.global_step)
        return {}

    trainer.step, trainer.evaluate = step, evaluate
    trainer.run()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    return trainer, drawn, [json.loads(line) for line in lines]


def test_a_sync_timeout_before_any_checkpoint_restarts_from_the_base_model(tmp_path, fake_cluster):
    timeout = WeightSyncError("rollout", "nccl weight sync of version 2: no answer from rollout")
    _, drawn, records = _run_with_a_failure(tmp_path, timeout, 2, "train.checkpoint_every=0")
    steps = [r for r in records if "eval" not in r]
    assert [(r["stage"], r["step"]) for r in steps] == [(1, 1), (1, 2), (2, 3), (2, 4)]
    assert [r["eval"] for r in records if "eval" in r] == ["base", "final"]
    # Both groups were rebuilt (nccl: the engines may be stuck in the broadcast).
    made = _Group.made
    assert [g.alive for g in made["learner"]] == [False, True]
    assert [g.alive for g in made["rollout"]] == [False, True]
    assert made["learner"][1].loaded == []  # nothing to load: the base model
    # Started over: the data order replays from the start, the restart is counted ...
    assert [step for step, _ in drawn] == [1, 2, 1, 2, 3, 4]
    assert drawn[2][1] == drawn[0][1] and drawn[3][1] == drawn[1][1]
    assert [r["restarts/learner"] for r in steps] == [1, 1, 1, 1]
    # ... and the new engines get the base weights first, then every step's.
    assert fake_cluster == [(1, 1), (2, 1), (2, 2), (2, 3), (2, 4), (2, 5)]
    assert [r["weight_version"] for r in steps] == [2, 3, 4, 5]
    assert (tmp_path / "run" / "final").is_dir()


def test_a_dead_learner_after_a_checkpoint_rolls_back_to_it(tmp_path, fake_cluster):
    _, drawn, records = _run_with_a_failure(
        tmp_path, LearnerFailure("a learner rank died"), 3, "train.checkpoint_every=2"
    )
    steps = [r for r in records if "eval" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    newest = _Group.made["learner"][1].loaded
    assert newest == [learner_dir(str(tmp_path / "run" / "checkpoints" / "step_000002"))]
    assert [step for step, _ in drawn] == [1, 2, 3, 3, 4]
    assert drawn[3][1] == drawn[2][1]  # step 3 redrawn from the checkpoint's data position


def test_a_failed_generation_finishes_its_scoring_round_before_recovery():
    """Verifiers busy with a round nobody collects would never take the next step's items."""
    finished = []
    scoring = SimpleNamespace(finish=lambda: finished.append(True))
    with pytest.raises(WeightSyncError), trainer_module._drained_on_error(scoring):
        raise WeightSyncError("rollout worker 0", "rollout worker 0 died")
    assert finished == [True]
    with trainer_module._drained_on_error(scoring):
        pass  # a round that went well is finished by the caller, not here
    assert finished == [True]
