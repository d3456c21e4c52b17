"""The learner's log-prob pass, three ways: forward + backward of one micro-batch with
the LM head on every position (`token_logprobs` on full logits, as the naive baseline and
public SCoRe reimplementations do); with logits only from the first attempt token on
(`logits_to_keep`); and with that plus the rows' shared prefix run once
(`Learner._logprobs`, `learner.share_prompt_prefix`, the default). Same model, same batch,
alternating, in one process.

The batch is shaped like a `make demo` micro-batch: a prompt of `--prompt` tokens whose first
`--shared` are the same in every trace (system prompt and few-shot examples: 135 of 163 in
conf/demo.yaml), attempt 1, bridge, attempt 2 (random ids; speed does not depend on them).

    .venv/bin/python benchmarks/learner_head.py --model tiny-llama
    .venv/bin/python benchmarks/learner_head.py --model smollm2-135m-instruct

Writes benchmarks/results/learner_head-<model>.json.
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_common import (
    MODELS,
    add_trace_shape_args,
    bench_config,
    demo_shaped_batch,
    median,
    table,
    write_result,
)
from plain_torch import full_logits
from transformers import AutoModelForCausalLM

from score_ray.learner.actor import Learner
from score_ray.models import resolve_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="tiny-llama")
    parser.add_argument("--micro-batch", type=int, default=8)
    add_trace_shape_args(parser)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after a warm-up")
    args = parser.parse_args()

    cfg = bench_config(args.model)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(cfg.model), dtype=torch.float32)
    batch = demo_shaped_batch(model.config.vocab_size, args.micro_batch, args)

    runs = {
        "full logits (naive)": lambda: full_logits(model, batch).sum().backward(),
        "logits from attempt 1 on": lambda: Learner._logprobs(model, batch, False).sum().backward(),
        "+ shared prefix once (score-ray)": lambda: (
            Learner._logprobs(model, batch).sum().backward()
        ),
    }
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for index in range(args.rounds + 1):
        for name, run in runs.items():
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            run()
            if index:
                seconds[name].append(time.perf_counter() - start)
    medians = {name: median(v) for name, v in seconds.items()}
    baseline = medians["full logits (naive)"]
    print(
        table(
            ["log-prob pass", "fwd+bwd s", "x naive"],
            [[name, value, baseline / value] for name, value in medians.items()],
        )
    )
    data = {
        "micro_batch": args.micro_batch,
        "tokens_per_trace": args.prompt + 2 * args.attempt + args.bridge,
        "shared_prompt_tokens": args.shared,
        "attempt_tokens_per_trace": 2 * args.attempt,
        "seconds": seconds,
        "median_s": medians,
        "speedup_vs_naive": {name: baseline / value for name, value in medians.items()},
    }
    print(f"wrote {write_result('learner_head', args.model, data)}")


if __name__ == "__main__":
    main()
