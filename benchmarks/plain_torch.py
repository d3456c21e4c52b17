"""The naive baseline's learner: one SCoRe update in plain torch, without DeepSpeed.

Public SCoRe reimplementations train this way: policy and frozen reference in one process,
full logits at every position, gradient accumulation over micro-batches, clipping, AdamW.
`step_throughput.py` uses it as the naive loop's update and `learner_step.py` as the floor
for the DeepSpeed Learner (with `Learner._logprobs` swapped in for `full_logits`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from score_ray.algo import TraceBatch, attempt_kl_coefficients, score_loss, token_logprobs
from score_ray.config import Config
from score_ray.learner.actor import LearnerShard

LogprobPass = Callable[[Any, TraceBatch], torch.Tensor]


def full_logits(model: Any, batch: TraceBatch) -> torch.Tensor:
    """[B, T] log-probs from logits at every position, the whole prompt of every row."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return token_logprobs(logits, batch.input_ids)


class PlainTorchLearner:
    """Policy, frozen reference and AdamW in this process; `logprobs` is the log-prob pass."""

    def __init__(self, cfg: Config, model_path: str, logprobs: LogprobPass = full_logits) -> None:
        self.cfg = cfg
        self.logprobs = logprobs
        dtype = getattr(torch, cfg.model.dtype)
        self.policy = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        self.reference = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        self.reference.eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.policy.parameters(),
            lr=cfg.learner.lr,
            betas=(cfg.learner.adam_beta1, cfg.learner.adam_beta2),
            weight_decay=cfg.learner.weight_decay,
        )

    def train_step(self, shard: LearnerShard, stage: int) -> None:
        """One optimizer step over micro-batches (gradient accumulation), as the Learner does."""
        cfg = self.cfg
        kl_coef1, kl_coef2 = attempt_kl_coefficients(stage, cfg.algo.beta1, cfg.algo.beta2)
        micro = cfg.learner.micro_batch_size
        num_micro = len(shard.batch) // micro
        self.policy.train()
        self.optimizer.zero_grad()
        for start in range(0, len(shard.batch), micro):
            piece = shard.batch.slice(start, start + micro)
            logprobs = self.logprobs(self.policy, piece)
            with torch.no_grad():
                ref_logprobs = self.logprobs(self.reference, piece)
            terms = score_loss(
                logprobs,
                ref_logprobs,
                piece.attempt1_mask,
                piece.attempt2_mask,
                shard.advantage1[start : start + micro],
                shard.advantage2[start : start + micro],
                kl_coef1,
                kl_coef2,
                token_normalizer=float(cfg.rollout.max_new_tokens),
                kl_estimator=cfg.algo.kl_estimator,
            )
            (terms.loss / num_micro).backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.learner.grad_clip)
        self.optimizer.step()
