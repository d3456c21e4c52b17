"""The SCoRe algorithm as small pure torch functions: no Ray, no I/O, no engines."""

from score_ray.algo.advantages import rloo_advantages, two_attempt_advantages
from score_ray.algo.losses import (
    LossTerms,
    attempt_kl_coefficients,
    kl_per_token,
    sampling_temperatures,
    score_loss,
    token_logprobs,
    truncated_importance_weights,
)
from score_ray.algo.micro_batches import fixed_micro_batches, pack_by_token_budget
from score_ray.algo.rewards import (
    attempt_returns,
    attempt_rewards,
    stage1_rewards,
    stage2_rewards,
)
from score_ray.algo.traces import Attempt, Trace, TraceBatch, collate_traces

__all__ = [
    "Attempt",
    "LossTerms",
    "Trace",
    "TraceBatch",
    "attempt_kl_coefficients",
    "attempt_returns",
    "attempt_rewards",
    "collate_traces",
    "fixed_micro_batches",
    "kl_per_token",
    "pack_by_token_budget",
    "rloo_advantages",
    "sampling_temperatures",
    "score_loss",
    "stage1_rewards",
    "stage2_rewards",
    "token_logprobs",
    "truncated_importance_weights",
    "two_attempt_advantages",
]
