"""Token log-probs, per-token KL estimates and the SCoRe policy-gradient loss.

Shapes: B traces, T tokens, V vocabulary. Masks are aligned with `input_ids`:
mask[b, t] = 1 when token t of trace b belongs to that attempt, and the
log-prob at [b, t] is that of token t given tokens < t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def token_logprobs(
    logits: torch.Tensor,  # [B, T - start, V] model outputs at positions start .. T-1
    input_ids: torch.Tensor,  # [B, T]
    start: int = 0,
    temperature: float | torch.Tensor = 1.0,  # scalar, or [B, T]: the one token t was drawn at
) -> torch.Tensor:  # [B, T]; columns 0 .. start (no logits for them) are 0
    """log pi_T(token_t | tokens_<t) for t > start, computed in float32 for stability.

    pi_T = softmax(logits / T) is the distribution the sampler drew token t from (vLLM's
    processed log-probs): a learner that scores sampled tokens at T = 1 when they were drawn
    at T != 1 takes its policy gradient and KL on another distribution than the behaviour
    policy's, i.e. off-policy with nothing correcting for it. A [B, T] `temperature` gives
    each token its own T (attempt 1 and attempt 2 may be sampled at different ones); it is
    indexed like `input_ids`, by the token being predicted.

    The logits at position p predict token p+1. A caller that only needs the log-probs
    of late tokens (the attempts, not the prompt) passes the logits from `start` on: the
    LM head's [T, V] output is the largest tensor of a small model's step.
    """
    shifted = logits[:, :-1].float()
    if isinstance(temperature, torch.Tensor):
        shifted = shifted / temperature[:, start + 1 :].unsqueeze(-1).float()
    elif temperature != 1.0:
        shifted = shifted / temperature
    targets = input_ids[:, start + 1 :].unsqueeze(-1)
    picked = shifted.gather(-1, targets).squeeze(-1) - torch.logsumexp(shifted, dim=-1)
    return torch.nn.functional.pad(picked, (start + 1, 0), value=0.0)


def sampling_temperatures(
    attempt1_mask: torch.Tensor,  # [B, T] 1 on attempt-1 tokens
    attempt2_mask: torch.Tensor,  # [B, T] 1 on attempt-2 tokens
    temperature1: float,
    temperature2: float,
) -> torch.Tensor:  # [B, T]
    """The temperature each token was sampled at: temperature1 on attempt 1, temperature2 on
    attempt 2, 1 elsewhere (prompt and bridge tokens are not sampled and carry no loss)."""
    return 1.0 + (temperature1 - 1.0) * attempt1_mask + (temperature2 - 1.0) * attempt2_mask


KL_ESTIMATORS = ("k2", "k3")
"""Estimators usable as a loss. k1 is not: its expected gradient is zero."""


def kl_per_token(
    logprobs: torch.Tensor,  # [B, T] current policy (at the sampling temperature)
    ref_logprobs: torch.Tensor,  # [B, T] frozen reference policy (same temperature)
    estimator: str = "k2",
) -> torch.Tensor:  # [B, T]
    """Per-token KL estimate on tokens y ~ pi (Schulman, 2020), with d = log pi - log pi_ref.

    Used as a loss, what matters is the expected gradient, E_pi[grad k(y)]:
    k1 = d: unbiased for the value KL(pi || pi_ref), but E_pi[grad d] = E_pi[grad log pi]
         = 0: as a loss it pulls nothing back. Value only (logging); `score_loss` rejects it.
    k2 = d^2 / 2: E_pi[d grad log pi] = grad KL(pi || pi_ref), the KL of the paper's
         objective (exact for each position's next-token distribution; like every token-
         level KL loss it ignores how a token shifts the KL of later positions).
    k3 = exp(-d) + d - 1: unbiased and >= 0 as a value of KL(pi || pi_ref), but
         E_pi[(1 - pi_ref / pi) grad log pi] = -sum_y pi_ref(y) grad log pi(y)
         = grad KL(pi_ref || pi): the reverse KL, which agrees with the forward one only to
         first order near pi_ref.
    """
    delta = logprobs - ref_logprobs
    if estimator == "k1":
        return delta
    if estimator == "k2":
        return 0.5 * delta.square()
    if estimator == "k3":
        return torch.exp(-delta) + delta - 1.0
    raise ValueError(f"algo.kl_estimator: unknown KL estimator {estimator!r} (k1, k2 or k3)")


def attempt_kl_coefficients(
    stage: int, beta1: float, beta2: float, single_turn: bool = False
) -> tuple[float, float]:
    """KL coefficients (attempt 1, attempt 2).

    Stage I (paper Eq. 3): beta2 on attempt 1 holds the first attempt near the base
    model, beta1 on attempt 2. Stage II (Eq. 4): beta1 on both attempts. The single-turn
    baseline (Table 4) trains attempt 1 only: beta1 on it, nothing on attempt 2.
    """
    if stage in (1, 2) and single_turn:
        return beta1, 0.0
    if stage == 1:
        return beta2, beta1
    if stage == 2:
        return beta1, beta1
    raise ValueError(f"stage must be 1 or 2, got {stage}")


def truncated_importance_weights(
    logprobs: torch.Tensor,  # [B, T] learner's current policy (grad is not followed)
    behaviour_logprobs: torch.Tensor,  # [B, T] the sampler's log-probs of the same tokens
    cap: float,
) -> torch.Tensor:  # [B, T] min(pi / mu, cap), no grad
    """Per-token truncated importance sampling (TIS) weight w_t = min(pi(y_t) / mu(y_t), C).

    Yao et al. (2025), "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"
    (https://fengyao.notion.site/off-policy-rl): when tokens come from a behaviour policy mu
    (an older weight version under one-step-off rollout, and a vLLM engine whose numerics
    differ from the learner's) the policy gradient E_mu[w_t A grad log pi(y_t)] with the
    token-level ratio truncated at C keeps the variance bounded at the price of a small bias;
    verl (`algorithm.rollout_is_threshold`, token level, truncate mode; 2.0 in its docs) and
    OpenRLHF apply it the same way. The weight is a constant of the gradient (detached): only
    log pi carries the graph. Compute log(pi / mu) in log space; positions outside the
    attempts (both log-probs 0) get weight 1 and are masked by the caller.
    """
    return torch.exp(logprobs.detach() - behaviour_logprobs).clamp(max=cap)


@dataclass
class LossTerms:
    loss: torch.Tensor
    """Scalar to minimise (carries the graph)."""
    pg_loss: float
    kl_loss: float
    kl1_sum: float
    """Sum of per-token KL over attempt-1 tokens (divide by kl1_tokens for the mean)."""
    kl1_tokens: float
    kl2_sum: float
    kl2_tokens: float


def score_loss(
    logprobs: torch.Tensor,  # [B, T] current policy, with grad
    ref_logprobs: torch.Tensor,  # [B, T] reference policy, no grad
    attempt1_mask: torch.Tensor,  # [B, T] 1 on attempt-1 tokens
    attempt2_mask: torch.Tensor,  # [B, T] 1 on attempt-2 tokens
    advantage1: torch.Tensor,  # [B] advantage of attempt 1
    advantage2: torch.Tensor,  # [B] advantage of attempt 2
    kl_coef1: float,
    kl_coef2: float,
    token_normalizer: float,
    kl_estimator: str = "k2",
    attempt1_weight: torch.Tensor | None = None,  # [B] weight of attempt 1's terms (default 1)
    token_weights: torch.Tensor | None = None,  # [B, T] policy-gradient weight per token
) -> LossTerms:
    """REINFORCE with a per-attempt KL penalty (paper Eqs. 3 and 4).

    For each trace b, with w_b = attempt1_weight[b] and rho_t = token_weights[b, t] (default
    1; under asynchronous rollout the truncated importance weights of
    `truncated_importance_weights`):
        loss_b = ( w_b sum_{t in y1} (-A_1[b] rho_t log pi(t) + beta_1 KL_t)
                     + sum_{t in y2} (-A_2[b] rho_t log pi(t) + beta_2 KL_t) ) / N
    and the loss is the mean over traces. rho weights the policy-gradient term only: the KL
    anchor stays the per-token penalty on the sampled tokens. Summing over tokens keeps the exact
    sequence-level REINFORCE gradient (grad log pi(y) = sum_t grad log pi(y_t));
    the constant N (the per-attempt token budget) only sets its scale, without
    the length bias of a per-sequence mean. A mean over traces makes equal
    shards on several data-parallel ranks average to the same gradient.

    w_b = 1 / M when one first attempt is continued by M second attempts (it appears in M
    traces and must count once), and 0 for a first attempt that the policy did not sample
    (offline first attempts: no policy-gradient and no KL term on tokens from another policy).
    """
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(
            f"algo.kl_estimator: {kl_estimator!r} cannot be a loss (expected one of "
            f"{list(KL_ESTIMATORS)}; k1's expected gradient is zero)"
        )
    if attempt1_weight is None:
        attempt1_weight = torch.ones_like(advantage1)
    kl = kl_per_token(logprobs, ref_logprobs, kl_estimator)
    # On-policy (None) the product is skipped rather than multiplied by ones: the synchronous
    # loss stays bit-for-bit what it was.
    weighted = logprobs if token_weights is None else token_weights * logprobs
    pg1 = -(advantage1.unsqueeze(-1) * weighted * attempt1_mask).sum(-1)
    pg2 = -(advantage2.unsqueeze(-1) * weighted * attempt2_mask).sum(-1)
    kl1 = (kl * attempt1_mask).sum(-1)
    kl2 = (kl * attempt2_mask).sum(-1)
    pg_per_trace = (attempt1_weight * pg1 + pg2) / token_normalizer
    kl_per_trace = (attempt1_weight * kl_coef1 * kl1 + kl_coef2 * kl2) / token_normalizer
    loss = (pg_per_trace + kl_per_trace).mean()
    counted1 = attempt1_weight > 0  # the KL means cover the attempts that carry a loss
    return LossTerms(
        loss=loss,
        pg_loss=pg_per_trace.mean().item(),
        kl_loss=kl_per_trace.mean().item(),
        kl1_sum=kl1[counted1].sum().item(),
        kl1_tokens=attempt1_mask[counted1].sum().item(),
        kl2_sum=kl2.sum().item(),
        kl2_tokens=attempt2_mask.sum().item(),
    )
