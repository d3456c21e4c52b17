"""Checkpoint and resume through the CLI, as a preempted user would see it.

Run 1 is killed with SIGKILL mid-Stage-I. Run 2 resumes, crosses into Stage II
and is stopped with SIGTERM, which must write a checkpoint and exit 143. Run 3
resumes and finishes. The metrics then hold every (stage, step) exactly once.

The same story runs with one-step-off rollout (`train.max_staleness=1`): each checkpoint
holds the next step's finished rollout, which the resumed run replays, so every step after
the first still learns on traces one weight version old (regenerated after the resume, they
would be fresh: staleness 0).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import pytest

from score_ray.checkpoint import checkpoint_root, latest_checkpoint, read_driver_state
from tests.integration.conftest import CONF

# Two steps per stage: run 1 dies after step 1 (mid-Stage-I), run 2 gets SIGTERM once step 3
# (Stage II) is checkpointed and writes step 4's checkpoint; two held-out problems per eval.
STAGES = [
    "train.stage1_steps=2",
    "train.stage2_steps=2",
    "train.checkpoint_every=1",
    "train.eval_max_problems=2",
]


def _steps(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written right now
    return [r for r in records if "eval" not in r]


@contextmanager
def _run(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """`score-ray train ARGS` in its own session, output to a file (a pipe nobody
    reads would fill up and block the run); the session is killed on the way out
    whatever happened. `env` is added to this environment (which loses RAY_ADDRESS: the
    driver starts its own Ray unless `env` names a cluster)."""
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **(env or {})}
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "score_ray.cli", "train", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            _kill_session(proc)


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and everything in its session, its local Ray included (Ray
    workers run in process groups of their own, so killpg would miss them): what a
    lost node looks like."""
    for pid in psutil.pids():
        with suppress(OSError):
            if os.getsid(pid) == proc.pid:
                os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _checkpointed_step(root: str | Path) -> int:
    checkpoint = latest_checkpoint(root)
    return read_driver_state(checkpoint)["global_step"] if checkpoint else 0


def _wait_for_step(
    proc: subprocess.Popen,
    out: Path,
    step: int,
    timeout: float = 600,
    checkpoints: str | None = None,
) -> None:
    """Until step `step` is logged and checkpointed (under `checkpoints`, by default
    OUTPUT_DIR/checkpoints)."""
    root = checkpoints or checkpoint_root(out)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r["step"] >= step for r in _steps(out)) and _checkpointed_step(root) >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early with exit code {proc.returncode}")
        time.sleep(0.5)
    raise AssertionError(f"step {step} not reached in {timeout}s")


@pytest.mark.parametrize(
    ("mode", "staleness"),
    [([], [0, 0, 0, 0]), (["train.max_staleness=1"], [0, 1, 1, 1])],
    ids=["synchronous", "one_step_off"],
)
def test_kill_resume_across_stages_then_sigterm(tmp_path, mode, staleness):
    out = tmp_path / "run"
    first_args = ["--config", str(CONF / "tiny.yaml"), f"output_dir={out}", *STAGES, *mode]
    with _run(first_args, tmp_path / "first.log") as first:
        _wait_for_step(first, out, 1)
        _kill_session(first)  # the driver and its local Ray die mid-Stage-I
    killed = read_driver_state(latest_checkpoint(checkpoint_root(out)))
    assert killed["global_step"] >= 1 and killed["stage"] == 1

    with _run(["--resume", str(out)], tmp_path / "second.log") as second:
        _wait_for_step(second, out, 3)  # into Stage II
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=300)
    log = (tmp_path / "second.log").read_text()
    assert second.returncode == 128 + signal.SIGTERM, log[-3000:]
    assert "checkpoint written" in log
    stopped = read_driver_state(latest_checkpoint(checkpoint_root(out)))
    assert stopped["global_step"] == max(r["step"] for r in _steps(out))
    assert stopped["stage"] == 2

    with _run(["--resume", str(out)], tmp_path / "third.log") as third:
        third.wait(timeout=600)
    assert third.returncode == 0, (tmp_path / "third.log").read_text()[-3000:]

    steps = _steps(out)
    assert [(r["stage"], r["step"]) for r in steps] == [(1, 1), (1, 2), (2, 3), (2, 4)]
    assert [r["weight_version"] for r in steps] == [1, 2, 3, 4]
    assert [r["rollout/staleness"] for r in steps] == staleness
    assert all(r["rollout/stale_dropped"] == 0 for r in steps)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval"] for r in records if "eval" in r] == ["base", "final"]
    assert (out / "final" / "config.json").is_file()
    assert len(list((out / "checkpoints").glob("step_*"))) <= 2  # keep_checkpoints


def _refused(args: list[str], log: Path) -> str:
    with _run(args, log) as proc:
        proc.wait(timeout=120)
    assert proc.returncode == 2
    return log.read_text()


def test_resume_of_missing_run_fails_clearly(tmp_path):
    log = _refused(["--resume", str(tmp_path / "nothing")], tmp_path / "log")
    assert "config.yaml" in log and "not found" in log


def test_fresh_run_refuses_to_overwrite_a_run(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    args = ["--config", str(CONF / "tiny.yaml"), f"output_dir={tmp_path}"]
    assert "--resume" in _refused(args, tmp_path / "log")
