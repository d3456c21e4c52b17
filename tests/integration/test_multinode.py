"""Multi-node placement on one machine: head + 2 nodes (ray.cluster_utils.Cluster).

The rollout worker is pinned to one node and the learner to another, so every
weight sync crosses nodes; a short run must complete with the weight version
advancing. A layout needing a GPU the cluster lacks must fail in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_rollout_and_learner_on_different_nodes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integration.multinode_main", str(tmp_path)],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("FINDINGS "))
    found = json.loads(line.removeprefix("FINDINGS "))

    assert found["rollout_nodes"] == [found["rollout_node"]]
    assert found["learner_nodes"] == [found["learner_node"]]
    assert found["rollout_node"] != found["learner_node"]

    assert found["layout_error"] and "GPU" in found["layout_error"]
    assert "learner" in found["layout_error"]
    assert found["layout_error_s"] < 10

    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "eval" not in r]
    assert [r["weight_version"] for r in steps] == [1, 2]
    assert [r["stage"] for r in steps] == [1, 2]
