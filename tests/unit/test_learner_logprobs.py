"""The learner's log-prob pass (logits only from the first attempt token on) equals the
full-logits computation on every attempt token, values and gradients, on a real model."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from score_ray.algo import Trace, collate_traces, token_logprobs
from score_ray.config import Config
from score_ray.learner.actor import Learner
from score_ray.models import build_tiny_model


def test_logprobs_from_first_attempt_token_match_full_logits():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(build_tiny_model(Config().model.cache_dir))
    ids = lambda n, start: list(range(start, start + n))  # noqa: E731
    # Prompts of different lengths: the kept window starts at the shortest prompt's end.
    traces = [
        Trace("a", ids(9, 100), ids(4, 200), ids(3, 300), ids(5, 400), "", ""),
        Trace("b", ids(6, 150), ids(2, 250), ids(3, 300), ids(3, 450), "", ""),
    ]
    batch = collate_traces(traces, pad_id=0)
    attempts = (batch.attempt1_mask + batch.attempt2_mask) > 0

    full = token_logprobs(
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
        batch.input_ids,
    )
    (full_grad,) = torch.autograd.grad(full[attempts].sum(), model.lm_head.weight)
    kept = Learner._logprobs(model, batch)
    (kept_grad,) = torch.autograd.grad(kept[attempts].sum(), model.lm_head.weight)

    assert torch.allclose(kept[attempts], full[attempts], atol=1e-5)
    assert torch.allclose(kept_grad, full_grad, atol=1e-5)
    assert kept[:, :6].abs().sum() == 0  # before the first attempt token: no logits
