"""REINFORCE leave-one-out (RLOO) advantages (Kool et al., 2019; Ahmadian et al., 2024)."""

from __future__ import annotations

import torch


def rloo_advantages(
    rewards: torch.Tensor,  # [P, S] rewards of S samples for each of P prompts
) -> torch.Tensor:  # [P, S]
    """A_i = R_i - mean_{j != i} R_j over the S samples of the same prompt.

    Equivalently S / (S - 1) * (R_i - mean_j R_j). Needs S >= 2. The SCoRe paper
    optimises its objective with on-policy REINFORCE; RLOO is the variance-reduced
    REINFORCE estimator with no learned critic.
    """
    samples = rewards.shape[-1]
    if samples < 2:
        raise ValueError(f"RLOO needs at least 2 samples per prompt, got {samples}")
    others_mean = (rewards.sum(dim=-1, keepdim=True) - rewards) / (samples - 1)
    return rewards - others_mean
