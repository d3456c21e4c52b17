"""One learner update, five ways: where the learn phase's time goes.

On a short zero-shot prompt `step_throughput.py` found score-ray's learn phase (DeepSpeed
ZeRO-2, shared prompt prefix, logits only on attempts) about as slow as the naive loop's plain
torch update, although `learner_head.py` measures its log-prob pass 2x faster. This script
separates the suspects on the same demo-shaped batch, alternating rows round by round:

- naive: plain torch, full logits, no prefix sharing (`plain_torch.PlainTorchLearner`, the
  naive loop's update in `step_throughput.py`);
- plain torch + `Learner._logprobs`: score-ray's log-prob pass without DeepSpeed, the floor;
- `Learner.train_step` under DeepSpeed ZeRO-0 and ZeRO-2 (world size 1, gloo, CPU);
- the same ZeRO-2 Learner as training runs it: a Ray actor behind `LearnerGroup` (the row
  includes shipping the batch to the actor).

A row minus the floor is what DeepSpeed (or the lack of prefix sharing) costs. Each row
times `--traces` traces in micro-batches of `--micro-batch`: forward, reference forward,
loss, backward, clipping, AdamW, as one optimizer step. `--profile` adds torch.profiler's
top operators for each row.

    .venv/bin/python benchmarks/learner_step.py --model tiny-llama
    .venv/bin/python benchmarks/learner_step.py --model smollm2-135m-instruct

Writes benchmarks/results/learner_step-<model>.json.
"""

from __future__ import annotations

import argparse
import gc
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from bench_common import (
    MODELS,
    add_trace_shape_args,
    bench_config,
    demo_shaped_batch,
    init_ray,
    median,
    table,
    write_result,
)
from plain_torch import PlainTorchLearner, full_logits
from transformers import AutoModelForCausalLM

from score_ray.config import Config
from score_ray.learner.actor import Learner, LearnerShard
from score_ray.learner.group import LearnerGroup
from score_ray.models import resolve_model_path

STAGE = 1
RAY_ROW = "Learner, ZeRO-2, in a Ray actor (as in training)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def deepspeed_learner(cfg: Config, model_path: str, port: int) -> Learner:
    learner = Learner(cfg, model_path, rank=0)
    learner.setup("127.0.0.1", port)
    return learner


class RayLearner:
    """One DeepSpeed rank in a Ray actor, driven through LearnerGroup as the Trainer does."""

    def __init__(self, cfg: Config, model_path: str) -> None:
        init_ray()
        self.group = LearnerGroup(cfg, model_path)

    def train_step(self, shard: LearnerShard, stage: int) -> None:
        self.group.train_step(shard.batch, shard.advantage1, shard.advantage2, stage)


def top_operators(fn: Callable[[], Any], rows: int) -> list[dict[str, Any]]:
    """torch.profiler's operators with the most self CPU time in one call of fn."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        {"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6, "calls": e.count}
        for e in events[:rows]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="tiny-llama")
    parser.add_argument("--traces", type=int, default=16, help="traces in one update")
    parser.add_argument("--micro-batch", type=int, default=8)
    add_trace_shape_args(parser)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds after a warm-up")
    parser.add_argument("--profile", type=int, default=0, help="print the top N operators")
    args = parser.parse_args()

    batch_overrides = (
        f"learner.micro_batch_size={args.micro_batch}",
        "train.samples_per_prompt=2",
        f"train.prompts_per_step={args.traces // 2}",
    )
    cfg = bench_config(args.model, *batch_overrides)
    model_path = resolve_model_path(cfg.model)
    vocab = AutoModelForCausalLM.from_pretrained(model_path).config.vocab_size
    batch = demo_shaped_batch(vocab, args.traces, args)
    advantages = torch.randn(2, args.traces, generator=torch.Generator().manual_seed(0))
    shard = LearnerShard(batch, advantages[0], advantages[1], torch.ones_like(advantages[0]))
    port = free_port()  # one process group for the whole run: DeepSpeed joins it once

    def zero(stage: int) -> Callable[[], Any]:
        overrides = (*batch_overrides, f"learner.zero_stage={stage}")
        return lambda: deepspeed_learner(bench_config(args.model, *overrides), model_path, port)

    builders: dict[str, Callable[[], Any]] = {
        "naive: plain torch, full logits": lambda: PlainTorchLearner(cfg, model_path, full_logits),
        "plain torch + Learner._logprobs": lambda: PlainTorchLearner(
            cfg, model_path, Learner._logprobs
        ),
        "Learner, DeepSpeed ZeRO-0": zero(0),
        "Learner, DeepSpeed ZeRO-2 (default)": zero(2),
        RAY_ROW: lambda: RayLearner(cfg, model_path),
    }
    seconds: dict[str, list[float]] = {name: [] for name in builders}
    profiles: dict[str, list[dict[str, Any]]] = {}
    # Models stay loaded for the whole run so rounds alternate rows (fair under drifting
    # load): 5 policies + references + Adam states, ~12 GB for the 135M model.
    learners = {name: build() for name, build in builders.items()}
    for index in range(args.rounds + 1):
        for name, learner in learners.items():
            start = time.perf_counter()
            learner.train_step(shard, STAGE)
            if index:
                seconds[name].append(time.perf_counter() - start)
        print(f"round {index}/{args.rounds} done", flush=True)
    if args.profile:
        for name, learner in learners.items():
            if name == RAY_ROW:  # its work runs in another process
                continue
            profiles[name] = top_operators(partial(learner.train_step, shard, STAGE), args.profile)
            print(f"\n{name}: top operators by self CPU time")
            print(
                table(
                    ["operator", "self CPU s", "calls"],
                    [[p["op"], p["self_cpu_s"], p["calls"]] for p in profiles[name]],
                )
            )
    del learners
    gc.collect()

    medians = {name: median(v) for name, v in seconds.items()}
    floor = medians["plain torch + Learner._logprobs"]
    naive = medians["naive: plain torch, full logits"]
    print()
    print(
        table(
            ["learner update", "s", "x naive", "- floor s"],
            [[name, value, naive / value, value - floor] for name, value in medians.items()],
        )
    )
    data = {
        "traces": args.traces,
        "micro_batch": args.micro_batch,
        "tokens_per_trace": args.prompt + 2 * args.attempt + args.bridge,
        "shared_prompt_tokens": args.shared,
        "torch_threads": torch.get_num_threads(),
        "seconds": seconds,
        "median_s": medians,
        "speedup_vs_naive": {name: naive / value for name, value in medians.items()},
        "over_floor_s": {name: value - floor for name, value in medians.items()},
        "profiles": profiles,
    }
    print(f"wrote {write_result('learner_step', args.model, data)}")


if __name__ == "__main__":
    main()
