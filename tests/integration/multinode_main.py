"""Run by test_multinode.py in a process of its own: a 3-node Ray cluster on this
machine (ray.cluster_utils.Cluster), rollout pinned to one node and the learner to
another through custom resources, a short two-stage run, and a layout the cluster
cannot hold. Prints one JSON line of findings for the test to check."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from score_ray.config import load_config
from score_ray.launch import prepare_inputs
from score_ray.placement import LayoutError
from score_ray.trainer import Trainer

CONF = Path(__file__).resolve().parents[2] / "conf"


def main(output_dir: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    rollout_node = cluster.add_node(num_cpus=2, resources={"rollout_node": 1})
    learner_node = cluster.add_node(num_cpus=2, resources={"learner_node": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        findings = {
            "rollout_node": rollout_node.node_id,
            "learner_node": learner_node.node_id,
            **_layout_failure(output_dir),
            **_pinned_run(output_dir),
        }
    finally:
        ray.shutdown()
        cluster.shutdown()
    print("FINDINGS " + json.dumps(findings))


def _pinned_run(output_dir: str) -> dict:
    cfg = load_config(
        CONF / "tiny.yaml",
        [
            f"output_dir={output_dir}/run",
            "rollout.resources={rollout_node: 1}",
            "learner.resources={learner_node: 1}",
            "train.stage1_steps=1",
            "train.stage2_steps=1",
        ],
    )
    model_path, train, held_out = prepare_inputs(cfg)
    trainer = Trainer(cfg, model_path, train, held_out)
    placed = {
        "rollout_nodes": trainer.actors.rollout.node_ids(),
        "learner_nodes": trainer.actors.learner.node_ids(),
    }
    trainer.run()
    trainer.actors.shutdown()
    return placed


def _layout_failure(output_dir: str) -> dict:
    cfg = load_config(CONF / "tiny.yaml", [f"output_dir={output_dir}/nogpu", "learner.num_gpus=1"])
    model_path, train, held_out = prepare_inputs(cfg)
    started = time.perf_counter()
    try:
        Trainer(cfg, model_path, train, held_out)
    except LayoutError as err:
        return {"layout_error": str(err), "layout_error_s": time.perf_counter() - started}
    return {"layout_error": None}


if __name__ == "__main__":
    main(sys.argv[1])
