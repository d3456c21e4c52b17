"""The learner's log-prob pass (logits only from the first attempt token on, the rows'
shared prefix run once) equals the full-logits computation on every attempt token, values
and gradients, on a real model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from score_ray.algo import Trace, TraceBatch, collate_traces, token_logprobs
from score_ray.config import Config
from score_ray.learner.actor import MIN_SHARED_PREFIX, Learner, shared_prefix_length
from score_ray.models import build_tiny_model


def ids(n: int, start: int) -> list[int]:
    return list(range(start, start + n))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(build_tiny_model(Config().model.cache_dir))


def full_logprobs(model, batch: TraceBatch) -> torch.Tensor:
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return token_logprobs(logits, batch.input_ids)


def grads(model, value: torch.Tensor) -> list[torch.Tensor]:
    params = [model.lm_head.weight, model.model.embed_tokens.weight]
    params += [model.model.layers[0].self_attn.q_proj.weight]
    return list(torch.autograd.grad(value, params))


def assert_same_values_and_grads(model, batch: TraceBatch, share_prefix: bool) -> torch.Tensor:
    attempts = (batch.attempt1_mask + batch.attempt2_mask) > 0
    full = full_logprobs(model, batch)
    kept = Learner._logprobs(model, batch, share_prefix)
    assert torch.allclose(kept[attempts], full[attempts], atol=1e-5)
    weights = torch.linspace(0.5, 1.5, int(attempts.sum()))  # rows weigh differently
    for got, want in zip(
        grads(model, (kept[attempts] * weights).sum()),
        grads(model, (full[attempts] * weights).sum()),
        strict=True,
    ):
        assert torch.allclose(got, want, atol=1e-5)
    return kept


def test_logprobs_from_first_attempt_token_match_full_logits(model):
    # Prompts of different lengths: the kept window starts at the shortest prompt's end.
    traces = [
        Trace("a", ids(9, 100), ids(4, 200), ids(3, 300), ids(5, 400), "", ""),
        Trace("b", ids(6, 150), ids(2, 250), ids(3, 300), ids(3, 450), "", ""),
    ]
    kept = assert_same_values_and_grads(model, collate_traces(traces, pad_id=0), True)
    assert kept[:, :6].abs().sum() == 0  # before the first attempt token: no logits


def test_shared_prompt_prefix_run_once_matches_full_batch(model):
    shared = ids(MIN_SHARED_PREFIX + 8, 500)  # system prompt + few-shot examples
    traces = [  # questions of different lengths, padded attempts
        Trace("a", shared + ids(5, 100), ids(4, 200), ids(3, 300), ids(5, 400), "", ""),
        Trace("b", shared + ids(3, 150), ids(2, 250), ids(3, 300), ids(3, 450), "", ""),
        Trace("b", shared + ids(3, 150), ids(6, 260), ids(3, 300), ids(1, 470), "", ""),
    ]
    batch = collate_traces(traces, pad_id=0)
    assert shared_prefix_length(batch.input_ids, batch.attention_mask) == len(shared)
    assert_same_values_and_grads(model, batch, share_prefix=True)
    assert_same_values_and_grads(model, batch, share_prefix=False)


def test_shared_prefix_length_stops_at_the_first_difference_or_padding():
    input_ids = torch.tensor([[1, 2, 3, 4, 0], [1, 2, 3, 5, 6], [1, 2, 3, 4, 7]])
    mask = torch.ones_like(input_ids)
    assert shared_prefix_length(input_ids, mask) == 3
    assert shared_prefix_length(input_ids[[0, 2]], mask[[0, 2]]) == 4
    mask[1, 1:] = 0  # row 1 is padding from column 1 on
    assert shared_prefix_length(input_ids, mask) == 1
    assert shared_prefix_length(input_ids[:1], torch.ones(1, 5, dtype=torch.long)) == 5
