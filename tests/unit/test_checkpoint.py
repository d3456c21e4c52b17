"""Checkpoint commit protocol and metrics truncation (pure file logic, no Ray)."""

import json

import pytest

from score_ray.checkpoint import (
    checkpoint_root,
    latest_checkpoint,
    read_driver_state,
    write_checkpoint,
)
from score_ray.metrics import MetricsLogger


def _learner_writer(directory: str) -> None:
    from pathlib import Path

    Path(directory).mkdir()
    (Path(directory) / "weights.bin").write_bytes(b"w")


def test_write_then_latest_round_trip(tmp_path):
    write_checkpoint(tmp_path, 3, {"global_step": 3, "stage": 1}, _learner_writer, keep=2)
    found = latest_checkpoint(tmp_path)
    assert found.name == "step_000003"
    assert read_driver_state(found) == {"global_step": 3, "stage": 1}
    assert (found / "learner" / "weights.bin").read_bytes() == b"w"


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path):
    write_checkpoint(tmp_path, 1, {"global_step": 1}, _learner_writer, keep=2)

    def crashing_writer(directory: str) -> None:
        _learner_writer(directory)
        raise OSError("disk vanished")

    with pytest.raises(OSError):
        write_checkpoint(tmp_path, 2, {"global_step": 2}, crashing_writer, keep=2)
    assert latest_checkpoint(tmp_path).name == "step_000001"
    # the torn attempt is cleaned up by the next successful write
    write_checkpoint(tmp_path, 3, {"global_step": 3}, _learner_writer, keep=2)
    names = sorted(p.name for p in checkpoint_root(tmp_path).iterdir())
    assert names == ["latest", "step_000001", "step_000003"]


def test_keep_prunes_oldest(tmp_path):
    for step in range(1, 5):
        write_checkpoint(tmp_path, step, {"global_step": step}, _learner_writer, keep=2)
    steps = sorted(p.name for p in checkpoint_root(tmp_path).glob("step_*"))
    assert steps == ["step_000003", "step_000004"]


def test_latest_falls_back_to_scan_when_pointer_is_stale(tmp_path):
    write_checkpoint(tmp_path, 1, {"global_step": 1}, _learner_writer, keep=3)
    write_checkpoint(tmp_path, 2, {"global_step": 2}, _learner_writer, keep=3)
    (checkpoint_root(tmp_path) / "latest").write_text("step_000009")
    assert latest_checkpoint(tmp_path).name == "step_000002"
    assert latest_checkpoint(tmp_path / "elsewhere") is None


def test_metrics_truncation_drops_later_steps_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"eval": "base", "step": 0}, {"step": 1}, {"step": 2}, {"step": 3}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 4, "lo')
    logger = MetricsLogger(tmp_path, resume_step=2)
    logger.log({"step": 3, "loss": 0.5}, 3)
    logger.close()
    kept = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["step"] for r in kept] == [0, 1, 2, 3]
    assert kept[-1]["loss"] == 0.5
