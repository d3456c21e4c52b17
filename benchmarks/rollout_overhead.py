"""Rollout overhead: two-attempt generation through the RolloutWorker actor (via
RolloutGroup) against raw `vllm.LLM.generate` doing the same work in this process.

Same model, prompts (score_ray.prompts.PromptBuilder), SamplingParams, seeds and engine
arguments (`engine_kwargs`, prefix caching on) on both sides; this process gets the actor's
environment (`rollout_env`) and its torch thread count before vLLM is imported. Per round,
after one warm-up round, three runs alternate:

    raw              LLM.generate(all attempts 1), then LLM.generate(all attempts 2)
    actor generate   RolloutGroup.generate: the same two batches inside the actor
    actor stream     RolloutGroup.stream: attempt 2 of a sample starts as soon as its
                     attempt 1 ends (what training uses, rollout.stream_verify)

The prefix cache is reset before each run (training resets it after every weight sync).
The attempt-2 hit rate is cached prompt tokens / prompt tokens of the attempt-2 prompts
(x1 + y1 + bridge); vLLM reuses whole KV blocks only, so it is measured at the default block
size and at `--block-size` (one more actor; raw is rerun with the same block size).

    .venv/bin/python benchmarks/rollout_overhead.py --model tiny-llama
    .venv/bin/python benchmarks/rollout_overhead.py --model smollm2-135m-instruct

Writes benchmarks/results/rollout_overhead-<model>.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import ray
from bench_common import MODELS, RESULTS, bench_config, init_ray, median, table, write_result

from score_ray.config import Config
from score_ray.launch import prepare_inputs
from score_ray.prompts import PromptBuilder
from score_ray.rollout.group import RolloutGroup
from score_ray.rollout.worker import engine_kwargs, rollout_env
from score_ray.tasks.base import Problem


class RawTwoAttempt:
    """The two-attempt work written directly against `vllm.LLM` (the baseline)."""

    def __init__(self, cfg: Config, model_path: str) -> None:
        from vllm import LLM

        self.cfg = cfg
        self.llm = LLM(**engine_kwargs(cfg, model_path, 0))
        self.prompts = PromptBuilder(self.llm.get_tokenizer(), cfg.prompts)

    def params(self, n: int, seed: int) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            n=n,
            temperature=self.cfg.rollout.temperature,
            top_p=self.cfg.rollout.top_p,
            max_tokens=self.cfg.rollout.max_new_tokens,
            logprobs=0,
            seed=seed,
            stop_token_ids=sorted(self.prompts.stop_token_ids),
        )

    def run(self, problems: list[Problem], samples: int, seed: int) -> dict[str, float]:
        """Generated tokens and attempt-2 prompt / cached tokens of one two-attempt batch."""
        from vllm import TokensPrompt

        self.llm.reset_prefix_cache()
        first = [self.prompts.first_prompt_ids(p.question) for p in problems]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids in first],
            self.params(samples, seed),
            use_tqdm=False,
        )
        second, tokens = [], 0
        for ids, result in zip(first, outputs, strict=True):
            for out in result.outputs:
                y1 = list(out.token_ids)
                tokens += len(y1)
                second.append(ids + y1 + self.prompts.bridge_ids(y1))
        results = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids in second],
            self.params(1, seed + 1),
            use_tqdm=False,
        )
        tokens += sum(len(r.outputs[0].token_ids) for r in results)
        return {
            "tokens": tokens,
            "a2_prompt_tokens": sum(len(ids) for ids in second),
            "a2_cached_tokens": sum(r.num_cached_tokens or 0 for r in results),
        }


def actor_run(group: RolloutGroup, mode: str, problems: list[Problem], samples: int, seed: int):
    worker = group.workers[0]
    ray.get(worker.__ray_call__.remote(lambda self: self.llm.reset_prefix_cache()))
    before = group.cache_stats()[0]["attempt2"]
    if mode == "generate":
        traces = group.generate(problems, samples, greedy=False, seed=seed)
    else:
        traces = [t for chunk in group.stream(problems, samples, False, seed) for _, t in chunk]
    after = group.cache_stats()[0]["attempt2"]
    return {
        "tokens": sum(t.num_generated for t in traces),
        "a2_prompt_tokens": after["prompt_tokens"] - before["prompt_tokens"],
        "a2_cached_tokens": after["cached_tokens"] - before["cached_tokens"],
    }


def measure(runs: dict[str, Any], rounds: int, problems, samples) -> dict[str, dict[str, Any]]:
    """Alternate the runs for warm-up + `rounds` rounds; per run the median tokens/s."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    last: dict[str, dict[str, float]] = {}
    for index in range(rounds + 1):
        seed = 1000 + index
        for name, run in runs.items():
            start = time.perf_counter()
            last[name] = run(problems, samples, seed)
            elapsed = time.perf_counter() - start
            print(
                f"round {index} {name}: {last[name]['tokens'] / elapsed:.1f} tokens/s", flush=True
            )
            if index:
                seconds[name].append(last[name]["tokens"] / elapsed)
    return {
        name: {
            "tokens_per_s": median(seconds[name]),
            "tokens_per_s_rounds": seconds[name],
            "tokens_per_run": last[name]["tokens"],
            "a2_hit_rate": last[name]["a2_cached_tokens"] / max(1, last[name]["a2_prompt_tokens"]),
        }
        for name in runs
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="tiny-llama")
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds after a warm-up")
    parser.add_argument(
        "--block-sizes",
        type=int,
        nargs="+",
        default=[0, 32],
        help="KV block sizes to measure (0: vLLM's default), each in its own process",
    )
    args = parser.parse_args()
    if len(args.block_sizes) > 1:
        # One vLLM engine per process: a second LLM in the same process is not supported.
        for block in args.block_sizes:
            command = [sys.executable, __file__, *_argv_without_blocks(), "--block-sizes"]
            subprocess.run([*command, str(block)], check=True)
        merged = {b: json.loads(_out(args.model, b).read_text()) for b in args.block_sizes}
        print(table(HEADER, [row for b in args.block_sizes for row in _rows(merged[b])]))
        return
    block = args.block_sizes[0]
    cfg = bench_config(
        args.model,
        f"rollout.max_new_tokens={args.max_new_tokens}",
        f"rollout.block_size={block}",
        "model.max_model_len=1024",
    )
    model_path, train, _ = prepare_inputs(cfg)
    problems = train[: args.problems]
    for key, value in rollout_env(cfg).items():
        os.environ[key] = value
    init_ray()
    group = RolloutGroup(cfg, model_path)
    threads = ray.get(group.workers[0].__ray_call__.remote(lambda self: _threads()))
    import torch

    torch.set_num_threads(threads["torch"])  # the actor's count (Ray sets it from num_cpus)
    raw = RawTwoAttempt(cfg, model_path)
    runs = {
        "raw vllm": raw.run,
        "actor generate": functools.partial(actor_run, group, "generate"),
        "actor stream": functools.partial(actor_run, group, "stream"),
    }
    measured = measure(runs, args.rounds, problems, args.samples)
    group.shutdown()
    base = measured["raw vllm"]["tokens_per_s"]
    for run in measured.values():
        run["ratio_to_raw"] = run["tokens_per_s"] / base
    data = {
        "block_size": block or "vllm default (128 on CPU)",
        "rollout_dtype": cfg.rollout.dtype,
        "problems": args.problems,
        "samples_per_prompt": args.samples,
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "target_ratio": 0.9,
        "threads": {"actor": threads, "raw": _threads()},
        "runs": measured,
    }
    path = write_result("rollout_overhead", args.model, data, _out(args.model, block))
    print(table(HEADER, _rows(json.loads(path.read_text()))))
    print(f"wrote {path}")


HEADER = ["KV block", "run", "tokens/s", "x raw", "attempt-2 cache hits"]


def _rows(data: dict[str, Any]) -> list[list[Any]]:
    return [
        [data["block_size"], name, run["tokens_per_s"], run["ratio_to_raw"], run["a2_hit_rate"]]
        for name, run in data["runs"].items()
    ]


def _out(model: str, block: int) -> Path:
    return RESULTS / f"rollout_overhead-{model}-block{block or 'default'}.json"


def _argv_without_blocks() -> list[str]:
    argv, skip = [], False
    for arg in sys.argv[1:]:
        if arg == "--block-sizes":
            skip = True
        elif skip and arg.lstrip("-").isdigit():
            continue
        else:
            skip = False
            argv.append(arg)
    return argv


def _threads() -> dict[str, Any]:
    import torch

    return {"torch": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


if __name__ == "__main__":
    main()
