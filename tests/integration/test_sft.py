"""`score-ray sft` through the real stack on the tiny model: Ray Train (TorchTrainer, 2 DDP
workers on gloo), RL's RolloutGroup (vLLM) and VerifierPool, a killed run that resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from score_ray.launch import prepare_splits
from score_ray.sft.run import run_sft

from .conftest import tiny_config

SMALL_TRAINING = (
    "sft.num_workers=2",
    "sft.batch_size=4",
    "sft.micro_batch_size=2",
    "sft.checkpoint_every=2",
    "sft.min_examples=4",
    "sft.lr=1e-3",
)


def test_star_on_the_rl_actors_says_plainly_when_a_round_has_too_few(
    ray_local, tiny_model_path, tmp_path
):
    """The random tiny model never answers right: both rounds keep 0 successful revisions,
    and the summary says each had too few to train on (no final/)."""
    cfg = tiny_config(
        tmp_path,
        "sft.method=star",
        "sft.rounds=2",
        "sft.problems_per_round=4",
        "sft.samples_per_prompt=2",
        *SMALL_TRAINING,
    )
    model_path, splits = prepare_splits(cfg)
    summary = run_sft(cfg, model_path, splits.train)
    rounds = summary["rounds"]
    assert [r["samples"] for r in rounds] == [8, 8]  # 4 problems x 2 traces, from vLLM
    assert [r["kept"] for r in rounds] == [0, 0]
    assert all(not r["trained"] and "too few examples to train on" in r["note"] for r in rounds)
    assert summary["final"] is None
    saved = json.loads((tmp_path / "sft_summary.json").read_text())
    assert saved["rounds"][1]["note"] == rounds[1]["note"]


def test_killed_sft_run_resumes_and_its_model_loads_in_vllm(ray_local, tiny_model_path, tmp_path):
    """gold SFT, 16 examples in batches of 4 (4 steps, a checkpoint every 2): a worker dies
    after step 2; the re-run resumes from that checkpoint, and final/ loads in transformers and
    in a vLLM rollout worker, with weights that moved."""
    import torch
    from transformers import AutoModelForCausalLM

    from score_ray.rollout.group import RolloutGroup

    cfg = tiny_config(tmp_path, "sft.method=gold", "sft.problems_per_round=16", *SMALL_TRAINING)
    model_path, splits = prepare_splits(cfg)
    with pytest.raises(Exception, match="injected failure after step 2"):
        run_sft(cfg, model_path, splits.train, fail_after_step=2)
    assert not (tmp_path / "final").exists()

    summary = run_sft(cfg, model_path, splits.train, fail_after_step=2)
    (report,) = summary["rounds"]
    assert report["trained"] and report["kept"] == 16
    assert report["steps"] == 4 and report["resumed_at"] == [2]
    assert len(report["losses"]) == 4
    final = Path(summary["final"])
    assert final == tmp_path / "final" and (final / "config.json").is_file()

    trained = AutoModelForCausalLM.from_pretrained(final)
    base = AutoModelForCausalLM.from_pretrained(model_path)
    moved = [
        not torch.equal(a, b) for a, b in zip(trained.parameters(), base.parameters(), strict=True)
    ]
    assert all(moved)

    rollout = RolloutGroup(cfg, str(final))
    try:
        traces = rollout.generate(splits.eval[:2], 1, greedy=True, seed=0)
    finally:
        rollout.shutdown()
    assert len(traces) == 2 and all(t.attempt1_ids for t in traces)
