"""Per-attempt rewards for SCoRe Stage I and Stage II (Kumar et al., 2024, Sec. 5).

r1, r2 are the verifier's binary rewards of attempts 1 and 2. The stage functions
return each attempt's own reward (Stage II: attempt 2's carries the shaping bonus);
`attempt_returns` then decides how much of attempt 2's reward the first attempt is
credited with (`algo.credit`):

- per_attempt: y1's tokens get reward1 only. Given y1, Stage II's -alpha * r1 term is a
  constant for the y2 gradient, so in expectation the bonus only scales attempt 2's
  gradient by (1 + alpha): it adds variance, not an incentive to improve.
- trajectory: y1's tokens get the return reward1 + gamma * reward2, the policy gradient of
  the paper's objective written over the whole trace (Eqs. 3 and 4: y1 ~ pi is inside the
  expectation). In Stage II it is (1 - gamma * alpha) r1 + gamma (1 + alpha) r2: first
  attempts from which the model improves are rewarded, and, for gamma * alpha > 1, so is a
  wrong first attempt followed by a right one (sandbagging attempt 1 pays). In Stage I it
  credits y1 with gamma * r2, alongside the beta2 KL that holds y1 near the base.
"""

from __future__ import annotations

import torch

CREDITS = ("per_attempt", "trajectory")


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


def attempt_returns(
    reward1: torch.Tensor,  # [P, S] each first attempt's own reward (stage function output)
    reward2: torch.Tensor,  # [P, S, M] each second attempt's (shaped) reward
    credit: str,
    gamma: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:  # return1 [P, S], return2 [P, S, M]
    """The return credited to each attempt's tokens (see the module docstring).

    per_attempt: return1 = reward1.
    trajectory:  return1 = reward1 + gamma * mean_j reward2[..., j], where the mean over the
                 M second attempts that continue the same y1 is an unbiased estimate of
                 E[reward2 | x1, y1] with less variance than one sample.
    Attempt 2 is the last turn: return2 = reward2 under both.
    """
    if credit == "per_attempt":
        return reward1.clone(), reward2.clone()
    if credit == "trajectory":
        return reward1 + gamma * reward2.mean(dim=-1), reward2.clone()
    raise ValueError(f"algo.credit: must be one of {list(CREDITS)}, got {credit!r}")
