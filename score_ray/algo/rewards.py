"""Per-attempt rewards for SCoRe Stage I and Stage II (Kumar et al., 2024, Sec. 5).

r1, r2 are the verifier's binary rewards of attempts 1 and 2. Each function
returns the reward credited to the tokens of each attempt. Every attempt's
tokens are credited with that attempt's own reward only: crediting attempt 1
with the shaped attempt-2 reward as well would pay (1 - alpha) * r1, i.e.
punish a correct first attempt for alpha > 1, the opposite of Stage II's aim
of improving both attempts.
"""

from __future__ import annotations

import torch


def stage1_rewards(
    r1: torch.Tensor,  # [N] verifier reward of attempt 1
    r2: torch.Tensor,  # [N] verifier reward of attempt 2
    train_attempt1: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage I (paper Eq. 3): maximise r(y2); attempt 1 gets no reward, only the
    beta2 KL that pins it to the base model. `train_attempt1=True` also credits r1
    to attempt 1."""
    reward1 = r1.clone() if train_attempt1 else torch.zeros_like(r1)
    return reward1, r2.clone()


def stage2_rewards(
    r1: torch.Tensor,  # [N]
    r2: torch.Tensor,  # [N]
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage II (paper Eq. 4 with the bonus of Eq. 5): attempt 1 earns r1, attempt 2
    earns r2 + alpha * (r2 - r1). A fix (0 -> 1) earns 1 + alpha, a break (1 -> 0)
    earns -alpha, no change earns r2."""
    return r1.clone(), r2 + alpha * (r2 - r1)


def single_turn_rewards(
    r1: torch.Tensor,  # [N]
    r2: torch.Tensor,  # [N]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-turn RL, the baseline of the paper's Table 4: attempt 1 earns r1 and attempt 2
    nothing. Attempt 2 is still sampled, only to measure self-correction during training."""
    return r1.clone(), torch.zeros_like(r2)


def attempt_rewards(
    stage: int,
    r1: torch.Tensor,  # [N]
    r2: torch.Tensor,  # [N]
    alpha: float,
    stage1_train_attempt1: bool = False,
    single_turn: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch to the reward of `stage` (1 or 2), or to the single-turn baseline's."""
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    if single_turn:
        return single_turn_rewards(r1, r2)
    if stage == 1:
        return stage1_rewards(r1, r2, stage1_train_attempt1)
    if stage == 2:
        return stage2_rewards(r1, r2, alpha)
    raise ValueError(f"stage must be 1 or 2, got {stage}")
