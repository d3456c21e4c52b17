"""Hand-computed checks of the SCoRe math in score_ray.algo."""

import math

import pytest
import torch

from score_ray.algo import (
    Trace,
    attempt_kl_coefficients,
    attempt_rewards,
    collate_traces,
    kl_per_token,
    rloo_advantages,
    score_loss,
    stage1_rewards,
    stage2_rewards,
    token_logprobs,
)

# The four self-correction cases as (r1, r2):
# wrong->right, right->right, right->wrong, wrong->wrong.
R1 = torch.tensor([0.0, 1.0, 1.0, 0.0])
R2 = torch.tensor([1.0, 1.0, 0.0, 0.0])


def test_stage2_shaping_four_cases():
    reward1, reward2 = stage2_rewards(R1, R2, alpha=10.0)
    assert reward1.tolist() == [0.0, 1.0, 1.0, 0.0]
    # fix earns 1 + alpha, keep-right earns 1, break earns -alpha, keep-wrong earns 0
    assert reward2.tolist() == [11.0, 1.0, -10.0, 0.0]


def test_stage2_without_shaping_is_plain_rewards():
    reward1, reward2 = stage2_rewards(R1, R2, alpha=0.0)
    assert reward1.tolist() == R1.tolist()
    assert reward2.tolist() == R2.tolist()


def test_stage1_gives_attempt1_no_reward():
    reward1, reward2 = stage1_rewards(R1, R2)
    assert reward1.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert reward2.tolist() == [1.0, 1.0, 0.0, 0.0]
    reward1, _ = stage1_rewards(R1, R2, train_attempt1=True)
    assert reward1.tolist() == R1.tolist()


def test_attempt_rewards_dispatch_and_bad_stage():
    assert attempt_rewards(2, R1, R2, alpha=1.0)[1].tolist() == [2.0, 1.0, -1.0, 0.0]
    with pytest.raises(ValueError, match="stage"):
        attempt_rewards(3, R1, R2, alpha=1.0)


def test_rloo_hand_values():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [3.0, 3.0, 0.0, 6.0]])
    adv = rloo_advantages(rewards)
    third = 1.0 / 3.0
    expected = [
        [2 * third, -2 * third, -2 * third, 2 * third],
        [0.0, 0.0, 0.0, 0.0],
        [3 - 3, 3 - 3, 0 - 4, 6 - 2],  # leave-one-out means: 3, 3, 4, 2
    ]
    assert torch.allclose(adv, torch.tensor(expected))


def test_rloo_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(torch.tensor([[1.0], [0.0]]))


def test_token_logprobs_hand_values():
    # vocab of 2; logits [0, ln 3] give p = [1/4, 3/4] at every position
    logits = torch.tensor([[[0.0, math.log(3.0)]] * 3])
    input_ids = torch.tensor([[0, 1, 0]])
    got = token_logprobs(logits, input_ids)
    assert got.shape == (1, 3)
    assert torch.allclose(got, torch.tensor([[0.0, math.log(0.75), math.log(0.25)]]))


def test_token_logprobs_from_a_start_position():
    # logits only for positions 1..3 (they predict tokens 2 and 3); columns 0..1 are 0
    logits = torch.tensor([[[0.0, math.log(3.0)]] * 3])
    input_ids = torch.tensor([[1, 1, 0, 1]])
    got = token_logprobs(logits, input_ids, start=1)
    expected = torch.tensor([[0.0, 0.0, math.log(0.25), math.log(0.75)]])
    assert torch.allclose(got, expected)


def test_kl_estimators_hand_values():
    logp = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    # k1 = log 0.5 - log 0.25 = ln 2; k3 = exp(-ln2) + ln2 - 1
    assert kl_per_token(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_per_token(logp, ref, "k3").item() == pytest.approx(0.5 + math.log(2) - 1)
    assert kl_per_token(ref, ref, "k3").item() == 0.0
    with pytest.raises(ValueError, match="estimator"):
        kl_per_token(logp, ref, "k2")


def test_kl_coefficients_per_stage():
    assert attempt_kl_coefficients(1, beta1=0.01, beta2=0.1) == (0.1, 0.01)
    assert attempt_kl_coefficients(2, beta1=0.01, beta2=0.1) == (0.01, 0.01)


def test_single_turn_trains_attempt1_only_in_both_stages():
    for stage in (1, 2):
        reward1, reward2 = attempt_rewards(stage, R1, R2, alpha=10.0, single_turn=True)
        assert reward1.tolist() == R1.tolist()
        assert reward2.tolist() == [0.0, 0.0, 0.0, 0.0]
        assert attempt_kl_coefficients(stage, 0.01, 0.1, single_turn=True) == (0.01, 0.0)
    with pytest.raises(ValueError, match="stage"):
        attempt_rewards(0, R1, R2, alpha=1.0, single_turn=True)


def _trace(prompt, a1, bridge, a2):
    return Trace("p", prompt, a1, bridge, a2, "y1", "y2")


def test_collate_masks_with_padding():
    traces = [
        _trace([5, 6], [7], [8, 9], [10, 11]),
        _trace([5], [7, 7], [8], [10]),
    ]
    batch = collate_traces(traces, pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 10, 11], [5, 7, 7, 8, 10, 0, 0]]
    assert batch.attention_mask.tolist() == [[1] * 7, [1, 1, 1, 1, 1, 0, 0]]
    assert batch.attempt1_mask.tolist() == [[0, 0, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0]]
    assert batch.attempt2_mask.tolist() == [[0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 0, 0]]
    assert len(batch.slice(1, 2)) == 1


def test_score_loss_hand_values_and_padding_ignored():
    # trace 0: attempt 1 at t=1, attempt 2 at t=2; trace 1 likewise, t=3 is padding
    logp = torch.tensor([[0.0, -1.0, -2.0, 0.0], [0.0, -0.5, -1.0, -5.0]])
    mask1 = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    mask2 = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    adv1 = torch.tensor([1.0, -1.0])
    adv2 = torch.tensor([2.0, 0.0])
    # reference is ln 2 lower on every real token; the padded token differs wildly
    ref = logp - math.log(2.0)
    ref[1, 3] = -9.0
    terms = score_loss(logp, ref, mask1, mask2, adv1, adv2, 0.1, 1.0, token_normalizer=2.0)
    # pg: trace 0 = (1*1 + 2*2)/2 = 2.5 ; trace 1 = (-(-1*-0.5) + 0)/2 = -0.25 ; mean 1.125
    k3 = 0.5 + math.log(2.0) - 1.0  # KL of each real attempt token
    kl_part = (0.1 * k3 + 1.0 * k3) / 2.0  # same for both traces
    assert terms.pg_loss == pytest.approx(1.125)
    assert terms.kl_loss == pytest.approx(kl_part)
    assert terms.loss.item() == pytest.approx(1.125 + kl_part)
    assert terms.kl1_tokens == 2 and terms.kl2_tokens == 2
    assert terms.kl1_sum == pytest.approx(2 * k3)


def test_score_loss_gradient_is_reinforce():
    # d loss / d logp_t = -A_k / (N * B) on attempt tokens, 0 elsewhere (no KL when coef 0)
    logp = torch.zeros(1, 3, requires_grad=True)
    mask1 = torch.tensor([[0.0, 1.0, 0.0]])
    mask2 = torch.tensor([[0.0, 0.0, 1.0]])
    terms = score_loss(
        logp, logp.detach(), mask1, mask2, torch.tensor([3.0]), torch.tensor([-2.0]), 0.0, 0.0, 4.0
    )
    terms.loss.backward()
    assert logp.grad.tolist() == [[0.0, -0.75, 0.5]]


def test_request_seeds_are_distinct_per_request_attempt_and_fan_out():
    from score_ray.rollout.worker import request_seed

    first = [request_seed(7, 1, i, fan_out=4) + j for i in range(50) for j in range(4)]
    second = [request_seed(7, 2, i) for i in range(200)]
    assert len(set(first)) == 200 and len(set(second)) == 200
    assert not set(first) & set(second)  # attempt 2 never reuses an attempt-1 stream
    assert request_seed(8, 1, 0) != request_seed(7, 1, 0)  # a new step, new streams
    assert request_seed(7, 1, 3, 4) == request_seed(7, 1, 3, 4)  # reproducible
