"""REINFORCE leave-one-out (RLOO) advantages (Kool et al., 2019; Ahmadian et al., 2024),
and their two-attempt form with branching second attempts.

Shapes: P prompts, S first attempts per prompt, M second attempts per first attempt
(`rollout.attempt2_samples`); a batch holds P * S * M traces in that order.
"""

from __future__ import annotations

import torch

from score_ray.algo.rewards import attempt_returns


def rloo_advantages(
    rewards: torch.Tensor,  # [..., S] rewards of S samples that share a baseline
) -> torch.Tensor:  # [..., S]
    """A_i = R_i - mean_{j != i} R_j over the last dimension (the samples of one group).

    Equivalently S / (S - 1) * (R_i - mean_j R_j). Needs S >= 2. The SCoRe paper
    optimises its objective with on-policy REINFORCE; RLOO is the variance-reduced
    REINFORCE estimator with no learned critic. The baseline of sample i does not depend
    on sample i, so the estimator stays unbiased.
    """
    samples = rewards.shape[-1]
    if samples < 2:
        raise ValueError(f"RLOO needs at least 2 samples per group, got {samples}")
    others_mean = (rewards.sum(dim=-1, keepdim=True) - rewards) / (samples - 1)
    return rewards - others_mean


def two_attempt_advantages(
    return1: torch.Tensor,  # [P, S] return credited to each first attempt y1
    return2: torch.Tensor,  # [P, S, M] return credited to each second attempt y2
) -> tuple[torch.Tensor, torch.Tensor]:  # A1 [P, S], A2 [P, S, M]
    """RLOO advantages of both attempts of a two-attempt batch.

    Attempt 1: leave-one-out over the S first attempts of a prompt (they share x1).
    Attempt 2: with M >= 2 siblings per first attempt, leave-one-out over the M second
    attempts that share (x1, y1): the baseline then removes everything y1 decided, so
    the y2 gradient compares revisions of the same first attempt (under Stage II's bonus,
    the -alpha * r1 term cancels exactly). With M = 1 there are no siblings and the
    baseline is over the S traces of the prompt, the plain RLOO estimator.

    Both stay unbiased: each baseline is a mean of samples drawn independently of the
    sample it is subtracted from, given what that sample conditions on (x1 for y1,
    (x1, y1) for y2), so E[baseline * grad log pi(y)] = baseline * E[grad log pi(y)] = 0.
    """
    prompts, firsts, siblings = return2.shape
    if return1.shape != (prompts, firsts):
        raise ValueError(f"return1 {tuple(return1.shape)} does not match return2 {return2.shape}")
    advantage1 = rloo_advantages(return1)
    if siblings >= 2:
        advantage2 = rloo_advantages(return2)
    else:
        advantage2 = rloo_advantages(return2.squeeze(-1)).unsqueeze(-1)
    return advantage1, advantage2


def trace_advantages(
    reward1: torch.Tensor,  # [N] attempt-1 reward of each trace, N = P * S * M
    reward2: torch.Tensor,  # [N] attempt-2 (shaped) reward of each trace
    first_attempts: int,  # S
    revisions: int,  # M
    credit: str,
    gamma: float,
    offline: torch.Tensor | None = None,  # [N] bool: attempt 1 from the offline pool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # A1 [N], A2 [N], attempt-1 weight [N]
    """Per-trace advantages of a batch laid out (prompt, first attempt, revision), and the
    weight of each trace's attempt-1 terms in `score_loss`.

    The M traces that continue one first attempt all carry its advantage A1 with weight 1/M,
    so the first attempt counts once; a first attempt from the offline pool gets weight 0
    (no policy-gradient and no KL term on tokens the policy did not sample).
    """
    shape = (-1, first_attempts, revisions)
    first_reward1 = reward1.view(shape)[..., 0]  # the M revisions of a y1 share its r1
    return1, return2 = attempt_returns(first_reward1, reward2.view(shape), credit, gamma)
    advantage1, advantage2 = two_attempt_advantages(return1, return2)
    per_trace1 = advantage1.unsqueeze(-1).expand(return2.shape).flatten()
    weight1 = torch.full_like(reward1, 1.0 / revisions)
    if offline is not None:
        weight1 = weight1.masked_fill(offline, 0.0)
    return per_trace1, advantage2.flatten(), weight1
