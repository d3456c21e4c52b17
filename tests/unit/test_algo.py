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
    truncated_importance_weights,
)
from score_ray.algo.advantages import two_attempt_advantages
from score_ray.algo.losses import sampling_temperatures
from score_ray.algo.micro_batches import (
    fixed_micro_batches,
    pack_by_token_budget,
    rank_micro_batches,
    split_to_count,
)
from score_ray.algo.rewards import attempt_returns

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
    # k2 = (ln 2)^2 / 2
    assert kl_per_token(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    with pytest.raises(ValueError, match="estimator"):
        kl_per_token(logp, ref, "k4")


def _expected_kl_gradient(estimator: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """E_{y ~ pi}[grad_theta k(y)] by enumerating a 3-token vocabulary (exact, no sampling),
    with grad KL(pi || ref) and grad KL(ref || pi) from their closed forms."""
    theta = torch.tensor([0.3, -0.2, 0.9], requires_grad=True)
    ref_logp = torch.log_softmax(torch.tensor([0.0, 0.5, -0.4]), -1)
    logp = torch.log_softmax(theta, -1)
    pi = logp.exp().detach()  # the sampling weights carry no gradient (y is a sample)
    estimates = kl_per_token(logp, ref_logp, estimator)
    (expected,) = torch.autograd.grad((pi * estimates).sum(), theta)
    logp = torch.log_softmax(theta, -1)
    forward = (logp.exp() * (logp - ref_logp)).sum()
    (grad_forward,) = torch.autograd.grad(forward, theta)
    reverse = (ref_logp.exp() * (ref_logp - torch.log_softmax(theta, -1))).sum()
    (grad_reverse,) = torch.autograd.grad(reverse, theta)
    return expected, grad_forward, grad_reverse


def test_kl_estimators_expected_gradients():
    # k2's expected gradient is that of KL(pi || ref), the paper's KL ...
    expected, forward, reverse = _expected_kl_gradient("k2")
    assert torch.allclose(expected, forward, atol=1e-6)
    assert not torch.allclose(expected, reverse, atol=1e-3)
    # ... k3's is that of the reverse KL(ref || pi) ...
    expected, forward, reverse = _expected_kl_gradient("k3")
    assert torch.allclose(expected, reverse, atol=1e-6)
    # ... and k1's is zero: as a loss it anchors nothing.
    expected, _, _ = _expected_kl_gradient("k1")
    assert torch.allclose(expected, torch.zeros(3), atol=1e-6)


def test_score_loss_rejects_k1():
    zeros = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="k1"):
        score_loss(zeros, zeros, zeros, zeros, torch.zeros(1), torch.zeros(1), 0.1, 0.1, 1.0, "k1")


def test_token_logprobs_at_a_temperature():
    # logits [0, ln 3] / T=2 = [0, ln sqrt(3)]: p = [1, sqrt 3] / (1 + sqrt 3)
    logits = torch.tensor([[[0.0, math.log(3.0)]] * 3])
    input_ids = torch.tensor([[0, 1, 0]])
    got = token_logprobs(logits, input_ids, temperature=2.0)
    norm = 1.0 + math.sqrt(3.0)
    assert torch.allclose(
        got, torch.tensor([[0.0, math.log(math.sqrt(3.0) / norm), math.log(1.0 / norm)]])
    )
    # per-token temperatures, indexed by the predicted token: T=1 for token 1, T=2 for token 2
    per_token = torch.tensor([[9.0, 1.0, 2.0]])
    got = token_logprobs(logits, input_ids, temperature=per_token)
    assert torch.allclose(got, torch.tensor([[0.0, math.log(0.75), math.log(1.0 / norm)]]))


def test_sampling_temperatures_follow_the_attempt_masks():
    mask1 = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0]])
    mask2 = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]])
    temps = sampling_temperatures(mask1, mask2, 0.7, 0.3)
    assert torch.allclose(temps, torch.tensor([[1.0, 0.7, 0.7, 1.0, 0.3]]))


def test_credit_example_from_the_issue():
    # r1 = (1,0,1,0), r2 = (1,1,1,1), alpha 10: shaped r2 = (1, 11, 1, 11). Per-attempt
    # credit pushes two right second attempts down: A2 = (-20/3, 20/3, -20/3, 20/3).
    r1 = torch.tensor([1.0, 0.0, 1.0, 0.0])
    r2 = torch.ones(4)
    reward1, reward2 = stage2_rewards(r1, r2, alpha=10.0)
    assert reward2.tolist() == [1.0, 11.0, 1.0, 11.0]
    return1, return2 = attempt_returns(reward1.view(1, 4), reward2.view(1, 4, 1), "per_attempt")
    adv1, adv2 = two_attempt_advantages(return1, return2)
    assert torch.allclose(adv2.flatten(), torch.tensor([-20.0, 20.0, -20.0, 20.0]) / 3)
    assert torch.allclose(adv1.flatten(), torch.tensor([2.0, -2.0, 2.0, -2.0]) / 3)
    # Trajectory credit, gamma 1: y1 returns r1 + shaped r2 = (2, 11, 2, 11); leave-one-out
    # means (8, 5, 8, 5): A1 = (-6, 6, -6, 6): the wrong first attempts that were fixed win.
    return1, return2 = attempt_returns(reward1.view(1, 4), reward2.view(1, 4, 1), "trajectory")
    adv1, _ = two_attempt_advantages(return1, return2)
    assert adv1.flatten().tolist() == [-6.0, 6.0, -6.0, 6.0]
    # gamma 0.5: returns (1.5, 5.5, 1.5, 5.5), leave-one-out means (4.1667, 2.8333, ...)
    return1, _ = attempt_returns(reward1.view(1, 4), reward2.view(1, 4, 1), "trajectory", 0.5)
    assert return1.flatten().tolist() == [1.5, 5.5, 1.5, 5.5]
    with pytest.raises(ValueError, match=r"algo\.credit"):
        attempt_returns(reward1.view(1, 4), reward2.view(1, 4, 1), "future")


def test_branching_baseline_is_over_siblings():
    # One prompt, two first attempts (r1 = 1, 0), each continued by two second attempts.
    # Shaped (alpha 10) r2: y1=right: (1, -10) for (right, wrong); y1=wrong: (11, 0).
    r1 = torch.tensor([1.0, 1.0, 0.0, 0.0])
    r2 = torch.tensor([1.0, 0.0, 1.0, 0.0])
    reward1, reward2 = stage2_rewards(r1, r2, alpha=10.0)
    first_reward1 = reward1.view(1, 2, 2)[..., 0]  # one r1 per first attempt
    return1, return2 = attempt_returns(first_reward1, reward2.view(1, 2, 2), "per_attempt")
    adv1, adv2 = two_attempt_advantages(return1, return2)
    # siblings: (1 - -10, -10 - 1) and (11 - 0, 0 - 11): the -alpha r1 term cancels
    assert adv2.flatten().tolist() == [11.0, -11.0, 11.0, -11.0]
    assert adv1.flatten().tolist() == [1.0, -1.0]
    # trajectory: y1 returns 1 + mean(1, -10) = -3.5 and 0 + mean(11, 0) = 5.5
    return1, _ = attempt_returns(first_reward1, reward2.view(1, 2, 2), "trajectory")
    assert return1.flatten().tolist() == [-3.5, 5.5]
    with pytest.raises(ValueError, match="does not match"):
        two_attempt_advantages(torch.zeros(1, 3), torch.zeros(1, 2, 2))


def test_attempt1_weight_scales_or_removes_attempt1_terms():
    logp = torch.zeros(2, 3, requires_grad=True)
    mask1 = torch.tensor([[0.0, 1.0, 0.0]] * 2)
    mask2 = torch.tensor([[0.0, 0.0, 1.0]] * 2)
    adv = torch.tensor([4.0, 4.0])
    weight = torch.tensor([0.5, 0.0])  # half (one of two siblings), none (offline y1)
    terms = score_loss(
        logp,
        logp.detach() - 1.0,
        mask1,
        mask2,
        adv,
        adv,
        1.0,
        1.0,
        1.0,
        "k2",
        attempt1_weight=weight,
    )
    terms.loss.backward()
    # d/dlogp of (w * (-A logp + 0.5 (logp - ref)^2)) / B at logp - ref = 1: w (-4 + 1) / 2
    assert logp.grad[:, 1].tolist() == [0.5 * -3.0 / 2, 0.0]
    assert logp.grad[:, 2].tolist() == [-3.0 / 2, -3.0 / 2]
    assert terms.kl1_tokens == 1  # the offline first attempt's KL is not counted


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
    terms = score_loss(
        logp, ref, mask1, mask2, adv1, adv2, 0.1, 1.0, token_normalizer=2.0, kl_estimator="k3"
    )
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


def test_truncated_importance_weights_hand_values():
    # ratios pi / mu = e^0 = 1, e^{ln 1.5} = 1.5, e^{ln 3} = 3 -> capped at 2, e^{ln 0.25}
    behaviour = torch.tensor([[-1.0, -2.0, -3.0, -0.5]])
    logp = behaviour + torch.log(torch.tensor([[1.0, 1.5, 3.0, 0.25]]))
    logp.requires_grad_(True)
    weights = truncated_importance_weights(logp, behaviour, cap=2.0)
    assert weights[0].tolist() == pytest.approx([1.0, 1.5, 2.0, 0.25])
    assert not weights.requires_grad  # a constant of the gradient


def test_token_weights_scale_the_policy_gradient_only():
    # One trace, attempt 1 at t=1 (weight 2), attempt 2 at t=2 (weight 0.5), k2 KL coef 1.
    # pg gradient per token = -A * w / N; the KL term (d^2/2, d = logp - ref = 1) keeps
    # its own gradient d / N = 1/4 unweighted.
    logp = torch.tensor([[0.0, -1.0, -1.0]], requires_grad=True)
    ref = torch.tensor([[0.0, -2.0, -2.0]])
    mask1 = torch.tensor([[0.0, 1.0, 0.0]])
    mask2 = torch.tensor([[0.0, 0.0, 1.0]])
    weights = torch.tensor([[1.0, 2.0, 0.5]])
    terms = score_loss(
        logp, ref, mask1, mask2, torch.tensor([3.0]), torch.tensor([-2.0]), 1.0, 1.0, 4.0,
        token_weights=weights,
    )  # fmt: skip
    # pg = -(3 * 2 * -1 + -2 * 0.5 * -1) / 4 = -(-6 + 1) / 4 = 1.25
    assert terms.pg_loss == pytest.approx(1.25)
    terms.loss.backward()
    # t=1: -3*2/4 + 1/4 = -1.25 ; t=2: 2*0.5/4 + 1/4 = 0.5
    assert logp.grad[0].tolist() == pytest.approx([0.0, -1.25, 0.5])


def test_unit_token_weights_leave_the_loss_unchanged():
    logp = torch.tensor([[0.0, -1.0, -2.0, 0.0], [0.0, -0.5, -1.0, -5.0]])
    mask1 = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    mask2 = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    args = (logp, logp - 0.3, mask1, mask2, torch.tensor([1.0, -1.0]), torch.tensor([2.0, 0.0]))
    plain = score_loss(*args, 0.1, 1.0, 2.0)
    weighted = score_loss(*args, 0.1, 1.0, 2.0, token_weights=torch.ones_like(logp))
    assert weighted.loss.item() == plain.loss.item()


def test_collate_carries_the_behaviour_logprobs_on_attempt_tokens():
    trace = _trace([5, 6], [7], [8, 9], [10, 11])
    trace.attempt1_logprobs = [-0.5]
    trace.attempt2_logprobs = [-1.0, -2.0]
    batch = collate_traces([trace, _trace([5], [7, 7], [8], [10])], pad_id=0)
    assert batch.behaviour_logprobs[0].tolist() == [0, 0, -0.5, 0, 0, -1.0, -2.0]
    assert batch.behaviour_logprobs[1].tolist() == [0.0] * 7  # no log-probs carried: 0
    assert batch.select([1, 0]).input_ids[1].tolist() == batch.input_ids[0].tolist()
    assert batch.lengths() == [7, 5]


def test_pack_by_token_budget_first_fit_decreasing():
    # lengths 5 3 8 2 7, budget 16. Longest first: 8 -> A; 7 -> A (2 x 8 = 16);
    # 5 -> B (A would be 3 x 8 = 24); 3 -> B (2 x 5 = 10); 2 -> B (3 x 5 = 15).
    assert pack_by_token_budget([5, 3, 8, 2, 7], 16) == [[2, 4], [0, 1, 3]]
    # a row over the budget travels alone
    assert pack_by_token_budget([20, 3, 3], 16) == [[0], [1, 2]]
    # padded tokens: 16 + 15 = 31 against fixed pairs [5 3] [8 2] [7] = 10 + 16 + 7 = 33
    assert fixed_micro_batches(5, 2) == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="max_tokens_per_micro_batch"):
        pack_by_token_budget([1], 0)


def test_ranks_get_the_same_number_of_micro_batches():
    # Budget 10: rank 0 (lengths 10 10 10) packs into [0] [1] [2], rank 1 (2 3 3) into
    # [0, 1, 2]. Rank 1 is split up to 3: [0, 1, 2] by length 3 3 2 into the longer half
    # [1, 2] and [0]; then [1, 2] (most rows) into [1] and [2].
    per_rank = rank_micro_batches([[10, 10, 10], [2, 3, 3]], micro_batch_size=4, max_tokens=10)
    assert per_rank[0] == [[0], [1], [2]]
    assert per_rank[1] == [[1], [2], [0]]
    assert rank_micro_batches([[1] * 4, [1] * 4], 2, 0) == [[[0, 1], [2, 3]]] * 2
    with pytest.raises(ValueError):
        split_to_count([[0]], [1], 2)
