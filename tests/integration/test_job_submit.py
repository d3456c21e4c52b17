"""`ray job submit` of conf/tiny.yaml to a real Ray head started on this machine.

This is the cluster path of README's "Run on a cluster", minus the cloud: a head started
with `ray start --head` (dashboard and job API on 127.0.0.1), the job submitted with the
`ray` CLI using `--working-dir` and cluster/runtime_env.yaml, and `score-ray train` as
the entrypoint. The driver must join that head, not start a Ray of its own.

Safety on a shared machine: the head gets its own ports and its own short `--temp-dir`,
and is stopped by killing exactly the processes of that session (their command lines
name the temp dir; actors and the job driver are their descendants). `ray stop` is never
used: it has no per-cluster option and would kill every other Ray on the machine.

Token auth: Ray 2.60's `ray start` turns token authentication on whenever a token
exists in ~/.ray/auth_token (any earlier local `ray.init()` writes one), and then the
job client needs that token too. This test sets RAY_AUTH_MODE=disabled for the head and
the client: the head is reachable from this machine only (see `head_env`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
START_TIMEOUT_S = 180
JOB_TIMEOUT_S = 900
CLI_TIMEOUT_S = 120


@dataclass
class Head:
    gcs_port: int
    dashboard_url: str
    temp_dir: Path
    env: dict[str, str]


def free_port() -> int:
    """A port that is free now (the kernel's pick); fine for a short-lived test head."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def head_env() -> dict[str, str]:
    """Environment for `ray start`, the job client and (inherited) the job's driver."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        RAY_AUTH_MODE="disabled",
        # Ray replaces --node-ip-address=127.0.0.1 with the machine's routable address
        # unless it runs in single-machine mode; with auth disabled, stay on loopback.
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
        # As on a cluster node where score-ray is installed: the entrypoint's
        # `score-ray` is found on PATH (the venv is not activated here).
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def session_processes(temp_dir: Path) -> list[psutil.Process]:
    """The head's processes (their command lines name temp_dir) and all their descendants."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(temp_dir) in arg for arg in proc.info["cmdline"] or ()):
            found[proc.pid] = proc
    for proc in list(found.values()):
        with contextlib.suppress(psutil.Error):
            found.update((child.pid, child) for child in proc.children(recursive=True))
    found.pop(os.getpid(), None)
    return list(found.values())


def running(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.Error:
            pass
    return alive


def stop_head(temp_dir: Path, grace_s: float = 5) -> None:
    """SIGTERM this head's processes, SIGKILL what is left after grace_s.

    Nothing of the session is kept, and here gcs_server outlived SIGTERM by more than
    15 s: a short grace period keeps the teardown fast.
    """
    procs = session_processes(temp_dir)
    for sig in ("terminate", "kill"):
        for proc in running(procs):
            with contextlib.suppress(psutil.Error):
                getattr(proc, sig)()
        deadline = time.monotonic() + grace_s
        while running(procs) and time.monotonic() < deadline:
            time.sleep(0.5)
    assert not running(procs), f"head processes survived SIGKILL: {running(procs)}"


def wait_for_job_api(url: str, timeout_s: float) -> None:
    """The dashboard starts after `ray start` returns; wait until the job API answers."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"Ray job API at {url} not up after {timeout_s} s")
        time.sleep(1)


@pytest.fixture
def ray_head() -> Iterator[Head]:
    # Short on purpose: Ray puts Unix sockets under it, and their paths max out at 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="rjs-", dir="/tmp"))
    gcs_port, dashboard_port = free_port(), free_port()
    env = head_env()
    cmd = [
        RAY, "start", "--head",
        f"--port={gcs_port}",
        "--node-ip-address=127.0.0.1",
        # What a plain `ray start --head` advertises on a 2-core machine: conf/tiny.yaml
        # must fit it (docs/cluster.md, "A local Ray head").
        "--num-cpus=2",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        # Defaults are fixed ports (52365, 10001) that another Ray here may hold.
        f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]  # fmt: skip
    try:
        started = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S
        )
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        url = f"http://127.0.0.1:{dashboard_port}"
        wait_for_job_api(url, START_TIMEOUT_S)
        yield Head(gcs_port, url, temp_dir, env)
    finally:
        stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def ray_cli(head: Head, *args: str, timeout_s: float = CLI_TIMEOUT_S) -> str:
    proc = subprocess.run(
        [RAY, *args], env=head.env, cwd=REPO, capture_output=True, text=True, timeout=timeout_s
    )
    assert proc.returncode == 0, (
        f"ray {' '.join(args)}:\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}"
    )
    return proc.stdout + proc.stderr


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_tiny_run_as_ray_job_on_existing_head(ray_head: Head, tmp_path: Path):
    out = tmp_path / "run"
    job_id = f"score-ray-test-{uuid.uuid4().hex[:8]}"
    # Waits for the job and streams its log (exits 1 if the job fails).
    ray_cli(
        ray_head,
        "job", "submit",
        "--address", ray_head.dashboard_url,
        "--submission-id", job_id,
        "--working-dir", str(REPO),
        "--runtime-env", str(REPO / "cluster" / "runtime_env.yaml"),
        "--",
        # conf/tiny.yaml is relative: it resolves in the uploaded working_dir.
        "score-ray", "train", "--config", "conf/tiny.yaml", f"output_dir={out}",
        # One step per stage and two eval problems: the driver's join is what is checked.
        "train.stage1_steps=1", "train.stage2_steps=1", "train.eval_max_problems=2",
        timeout_s=JOB_TIMEOUT_S,
    )  # fmt: skip
    address = ("--address", ray_head.dashboard_url)
    status = strip_ansi(ray_cli(ray_head, "job", "status", *address, job_id))
    logs = strip_ansi(ray_cli(ray_head, "job", "logs", *address, job_id))
    assert f"Job '{job_id}' succeeded" in status, status + logs[-5000:]

    # The driver joined this head instead of starting a Ray of its own.
    assert "Started a local Ray instance" not in logs
    joined = [line for line in logs.splitlines() if "Connecting to existing Ray cluster" in line]
    assert joined and f":{ray_head.gcs_port}" in joined[0], logs[-5000:]
    assert "done: Acc@t1" in logs

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in records if "eval" not in r] == [(1, 1), (2, 2)]
    assert (out / "config.yaml").is_file()
    assert (out / "final" / "config.json").is_file()
