"""The learner's log-prob pass before and after `logits_to_keep`: forward + backward of one
micro-batch with the LM head on every position (`token_logprobs` on full logits, as before,
and as the naive baseline does) against logits only from the first attempt token on (what
`Learner._logprobs` does now). Same model, same batch, alternating, in one process.

The batch is shaped like a training micro-batch: prompt, attempt 1, bridge, attempt 2 of
`--prompt`, `--attempt`, `--bridge`, `--attempt` tokens (random ids; speed does not depend
on them).

    .venv/bin/python benchmarks/learner_head.py --model tiny-llama
    .venv/bin/python benchmarks/learner_head.py --model smollm2-135m-instruct

Writes benchmarks/results/learner_head-<model>.json.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from bench_common import MODELS, bench_config, median, table, write_result
from transformers import AutoModelForCausalLM

from score_ray.algo import Trace, collate_traces, token_logprobs
from score_ray.learner.actor import Learner
from score_ray.models import resolve_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="tiny-llama")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=66)
    parser.add_argument("--attempt", type=int, default=48)
    parser.add_argument("--bridge", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after a warm-up")
    args = parser.parse_args()

    cfg = bench_config(args.model)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(cfg.model), dtype=torch.float32)
    vocab = model.config.vocab_size
    rng = random.Random(0)

    def ids(n: int) -> list[int]:
        return [rng.randrange(vocab) for _ in range(n)]

    batch = collate_traces(
        [
            Trace(
                "p",
                ids(args.prompt),
                ids(args.attempt),
                ids(args.bridge),
                ids(args.attempt),
                "",
                "",
            )
            for _ in range(args.micro_batch)
        ],
        pad_id=0,
    )

    def full() -> None:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        token_logprobs(logits, batch.input_ids).sum().backward()

    def masked() -> None:
        Learner._logprobs(model, batch).sum().backward()

    runs = {"full logits (before, naive)": full, "from attempt 1 on (after)": masked}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for index in range(args.rounds + 1):
        for name, run in runs.items():
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            run()
            if index:
                seconds[name].append(time.perf_counter() - start)
    before, after = (median(v) for v in seconds.values())
    print(table(["log-prob pass", "fwd+bwd s"], [[name, median(v)] for name, v in seconds.items()]))
    print(f"speedup {before / after:.2f}x")
    data = {
        "micro_batch": args.micro_batch,
        "tokens_per_trace": args.prompt + 2 * args.attempt + args.bridge,
        "attempt_tokens_per_trace": 2 * args.attempt,
        "seconds": seconds,
        "before_s_median": before,
        "after_s_median": after,
        "speedup": before / after,
    }
    print(f"wrote {write_result('learner_head', args.model, data)}")


if __name__ == "__main__":
    main()
