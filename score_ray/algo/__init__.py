"""The SCoRe algorithm as small pure torch functions: no Ray, no I/O, no engines."""

from score_ray.algo.advantages import rloo_advantages
from score_ray.algo.losses import (
    LossTerms,
    attempt_kl_coefficients,
    kl_per_token,
    masked_token_logprobs,
    score_loss,
    token_logprobs,
)
from score_ray.algo.rewards import attempt_rewards, stage1_rewards, stage2_rewards
from score_ray.algo.traces import Trace, TraceBatch, collate_traces

__all__ = [
    "LossTerms",
    "Trace",
    "TraceBatch",
    "attempt_kl_coefficients",
    "attempt_rewards",
    "collate_traces",
    "kl_per_token",
    "masked_token_logprobs",
    "rloo_advantages",
    "score_loss",
    "stage1_rewards",
    "stage2_rewards",
    "token_logprobs",
]
