"""Token log-probs, per-token KL estimates and the SCoRe policy-gradient loss.

Shapes: B traces, T tokens, V vocabulary. Masks are aligned with `input_ids`:
mask[b, t] = 1 when token t of trace b belongs to that attempt, and the
log-prob at [b, t] is that of token t given tokens < t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def token_logprobs(
    logits: torch.Tensor,  # [B, T, V] model outputs for input_ids
    input_ids: torch.Tensor,  # [B, T]
) -> torch.Tensor:  # [B, T]; column 0 (no context) is 0
    """log pi(token_t | tokens_<t), computed in float32 for stability."""
    shifted = logits[:, :-1].float()
    targets = input_ids[:, 1:].unsqueeze(-1)
    picked = shifted.gather(-1, targets).squeeze(-1) - torch.logsumexp(shifted, dim=-1)
    return torch.nn.functional.pad(picked, (1, 0), value=0.0)


def masked_token_logprobs(
    hidden: torch.Tensor,  # [B, T, H] last hidden states for input_ids
    output_layer: torch.nn.Module,  # H -> V (the LM head)
    input_ids: torch.Tensor,  # [B, T]
    mask: torch.Tensor,  # [B, T] 1 on the tokens whose log-prob is needed
) -> torch.Tensor:  # [B, T]; token_logprobs where mask is 1, 0 elsewhere
    """`token_logprobs` on the masked tokens only: the output layer and the softmax run on
    just the K positions that predict them ([K, V] instead of [B, T, V]).

    The loss only needs attempt tokens, and the vocabulary projection with its softmax is a
    large part of a small model's forward and backward (SmolLM2: V = 49152); prompt, bridge
    and padding positions are skipped. Only valid for a plain linear head (no logit
    scaling or soft-capping after it)."""
    rows, cols = mask[:, 1:].nonzero(as_tuple=True)  # token cols + 1 is predicted at cols
    logits = output_layer(hidden[rows, cols]).float()  # [K, V]
    targets = input_ids[rows, cols + 1].unsqueeze(-1)
    picked = logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    out = torch.zeros(input_ids.shape, dtype=picked.dtype, device=picked.device)
    return out.index_put((rows, cols + 1), picked)


def kl_per_token(
    logprobs: torch.Tensor,  # [B, T] current policy
    ref_logprobs: torch.Tensor,  # [B, T] frozen reference policy
    estimator: str = "k3",
) -> torch.Tensor:  # [B, T]
    """Per-token estimate of KL(pi || pi_ref) on tokens sampled from pi (Schulman, 2020).

    k1 = log pi - log pi_ref (unbiased, can be negative);
    k3 = exp(d) - d - 1 with d = log pi_ref - log pi (unbiased, always >= 0).
    """
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k3":
        delta = ref_logprobs - logprobs
        return torch.exp(delta) - delta - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r} (expected 'k1' or 'k3')")


def attempt_kl_coefficients(stage: int, beta1: float, beta2: float) -> tuple[float, float]:
    """KL coefficients (attempt 1, attempt 2).

    Stage I (paper Eq. 3): beta2 on attempt 1 holds the first attempt near the base
    model, beta1 on attempt 2. Stage II (Eq. 4): beta1 on both attempts.
    """
    if stage == 1:
        return beta2, beta1
    if stage == 2:
        return beta1, beta1
    raise ValueError(f"stage must be 1 or 2, got {stage}")


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
    kl_estimator: str = "k3",
) -> LossTerms:
    """REINFORCE with a per-attempt KL penalty (paper Eqs. 3 and 4).

    For each trace b:
        loss_b = sum_k sum_{t in attempt k} ( -A_k[b] * log pi(t) + beta_k * KL_t ) / N
    and the loss is the mean over traces. Summing over tokens keeps the exact
    sequence-level REINFORCE gradient (grad log pi(y) = sum_t grad log pi(y_t));
    the constant N (the per-attempt token budget) only sets its scale, without
    the length bias of a per-sequence mean. A mean over traces makes equal
    shards on several data-parallel ranks average to the same gradient.
    """
    kl = kl_per_token(logprobs, ref_logprobs, kl_estimator)
    pg1 = -(advantage1.unsqueeze(-1) * logprobs * attempt1_mask).sum(-1)
    pg2 = -(advantage2.unsqueeze(-1) * logprobs * attempt2_mask).sum(-1)
    kl1 = (kl * attempt1_mask).sum(-1)
    kl2 = (kl * attempt2_mask).sum(-1)
    pg_per_trace = (pg1 + pg2) / token_normalizer
    kl_per_trace = (kl_coef1 * kl1 + kl_coef2 * kl2) / token_normalizer
    loss = (pg_per_trace + kl_per_trace).mean()
    return LossTerms(
        loss=loss,
        pg_loss=pg_per_trace.mean().item(),
        kl_loss=kl_per_trace.mean().item(),
        kl1_sum=kl1.sum().item(),
        kl1_tokens=attempt1_mask.sum().item(),
        kl2_sum=kl2.sum().item(),
        kl2_tokens=attempt2_mask.sum().item(),
    )
