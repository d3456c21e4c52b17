"""LoRA (issue 14): weight sync, learner update and rollout generation, side by side for

    full     full fine-tuning, full weights synced (today's default)
    merged   LoRA; sync sends W + (alpha/r) * B @ A under the base names (learner.lora.sync=merged)
    adapter  LoRA; sync sends only A and B, vLLM serves them as a LoRA (learner.lora.sync=adapter)

on the same model, prompts and seeds, one mode after the other in one run. Per mode: the median
over --steps of one learner update (a batch this mode's rollout generated) and of one sync,
the rollout's generation rate (attempt-1 + attempt-2 tokens per second, after the syncs), and
the largest |log-prob| gap between rollout and learner after the last sync (parity).

    .venv/bin/python benchmarks/lora_sync.py --model tiny-llama --steps 2
    .venv/bin/python benchmarks/lora_sync.py --model smollm2-135m-instruct --steps 3

Writes benchmarks/results/lora_sync-<model>.json.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from bench_common import MODELS, bench_config, init_ray, median, table, write_result

from score_ray.algo import collate_traces
from score_ray.learner.group import LearnerGroup
from score_ray.models import resolve_model_path
from score_ray.rollout.group import RolloutGroup
from score_ray.sync import sync_weights
from score_ray.tasks.base import Problem

MODES: dict[str, tuple[str, ...]] = {
    "full": (),
    "merged": ("learner.lora.sync=merged",),
    "adapter": ("learner.lora.sync=adapter",),
}
PROBLEMS = [Problem(f"p{i}", f"What is {i + 3} + {2 * i + 1}?", str(3 * i + 4)) for i in range(8)]


def generated_tokens(traces: list) -> int:
    return sum(len(t.attempt1_ids) + len(t.attempt2_ids) for t in traces)


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Learner + rollout for one mode: warm-up step and sync, then --steps timed ones."""
    lora = [] if mode == "full" else [f"learner.lora.rank={args.rank}", "learner.lora.alpha=16"]
    cfg = bench_config(
        args.model,
        *lora,
        *MODES[mode],
        f"train.prompts_per_step={len(PROBLEMS)}",
        "train.samples_per_prompt=2",
        "learner.zero_stage=0",
        f"learner.lr={args.lr}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
    )
    model_path = resolve_model_path(cfg.model)
    rollout = RolloutGroup(cfg, model_path)
    learner = LearnerGroup(cfg, model_path)
    learn_s, sync_s, gen_s, tokens, handle = [], [], [], [], None
    for version in range(1, args.steps + 2):  # version 1 warms up every path
        start = time.perf_counter()
        traces = rollout.generate(PROBLEMS, 2, False, version)
        generate = time.perf_counter() - start
        batch = collate_traces(traces, pad_id=0)
        advantage = torch.tensor([1.0, -1.0] * (len(traces) // 2))
        start = time.perf_counter()
        learner.train_step(batch, advantage, -advantage, stage=2)
        learn = time.perf_counter() - start
        start = time.perf_counter()
        handle = sync_weights(learner, rollout, version)
        sync = time.perf_counter() - start
        if version > 1:
            learn_s.append(learn)
            sync_s.append(sync)
            gen_s.append(generate)
            tokens.append(generated_tokens(traces))
    probe = [traces[0].token_ids]
    parity = max(
        abs(a - b)
        for a, b in zip(
            rollout.sequence_logprobs(probe)[0], learner.sequence_logprobs(probe)[0], strict=True
        )
    )
    rollout.shutdown()
    learner.shutdown()
    assert handle is not None
    return {
        "wire_bytes": handle.num_bytes,
        "tensors": handle.num_tensors,
        "sync_s_median": median(sync_s),
        "learn_s_median": median(learn_s),
        # generation of step k > 1 ran on the weights synced at step k - 1 (LoRA served)
        "generate_tokens_per_s": sum(tokens) / sum(gen_s),
        "parity_max_abs_logprob_diff": parity,
        "sync_s": sync_s,
        "learn_s": learn_s,
        "generate_s": gen_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="tiny-llama")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    args = parser.parse_args()

    init_ray()
    results = {mode: run_mode(mode, args) for mode in args.modes}
    header = ["mode", "sync MB", "sync s", "learn s", "gen tok/s", "parity"]
    rows = [
        [
            mode,
            r["wire_bytes"] / 1e6,
            r["sync_s_median"],
            r["learn_s_median"],
            r["generate_tokens_per_s"],
            r["parity_max_abs_logprob_diff"],
        ]
        for mode, r in results.items()
    ]
    print(table(header, rows))
    record = {"steps": args.steps, "lora_rank": args.rank, "modes": results}
    print(f"wrote {write_result('lora_sync', args.model, record)}")


if __name__ == "__main__":
    main()
