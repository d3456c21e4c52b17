"""End-to-end step throughput and step-time breakdown: score-ray against a naive
single-process SCoRe, and streamed against batch verification.

score-ray: the real Trainer and actors (RolloutGroup, VerifierPool, LearnerGroup, weight
sync), one `Trainer.step` at a time, in two modes that alternate step by step:

    stream   rollout.stream_verify=true: each trace is scored as soon as it is finished
    batch    rollout.stream_verify=false: generate the whole batch, then verify it

naive: what public SCoRe reimplementations do, written here in one process: HF `generate` for
both attempts (prompts from score_ray.prompts.PromptBuilder), the same scorer
(score_ray.verify.scorers.score_completion) called in-process, and a plain torch AdamW step on
the same loss (score_ray.algo: attempt_rewards, rloo_advantages, collate_traces, score_loss),
the same batch, micro-batches and KL reference. Its steps alternate with score-ray's (the
order rotates from round to round).

Reported per mode (totals over the timed steps, after one warm-up step each): traces trained
per second, and the share of the step spent in generate / verify / learn / sync. `verify` is
the time verification adds to the step: all of it in batch mode, only the wait after the
last trace arrived in stream mode (`verify busy` is the verifiers' wall time, overlapped).

    .venv/bin/python benchmarks/step_throughput.py --model tiny-llama
    .venv/bin/python benchmarks/step_throughput.py --model smollm2-135m-instruct --steps 2
    # the demo's task and prompts (few-shot examples: a 135-token prefix every trace shares)
    .venv/bin/python benchmarks/step_throughput.py --model smollm2-135m-instruct --steps 2 \
        --config conf/demo.yaml --prompts 2 --samples 4 --max-new-tokens 32

Writes benchmarks/results/step_throughput-<model>.json (with `--config`:
step_throughput-<model>-<config name>.json).

`--loops` compares the training loops of issue 14 instead, each a Trainer of its own run for
consecutive steps (one-step-off only overlaps across consecutive steps, so loops cannot
alternate step by step as the modes above do; they run one after another, then the naive
loop): synchronous, one-step-off (`train.max_staleness=1`), one-step-off with rollout and
learner pinned to disjoint cores, and LoRA (rank 8, merged sync) synchronous, one-step-off
and one-step-off pinned. `--loop NAME` (repeatable) runs only those, into a file of its own.
Each loop: one warm-up step, then `--steps` timed steps, every one of which starts the next
step's rollout (one-step-off). Writes step_throughput-loops-<model>[-<config name>].json.

    .venv/bin/python benchmarks/step_throughput.py --model tiny-llama --loops --steps 3
    .venv/bin/python benchmarks/step_throughput.py --model tiny-llama --loops --steps 3 \
        --loop "sync LoRA" --loop "one-step-off LoRA pinned"
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from bench_common import MODELS, ROOT, TINY_CONFIG, bench_config, init_ray, table, write_result
from plain_torch import PlainTorchLearner, full_logits

from score_ray.algo import Trace, attempt_rewards, collate_traces, rloo_advantages
from score_ray.config import Config
from score_ray.launch import prepare_inputs
from score_ray.learner.actor import LearnerShard
from score_ray.models import load_tokenizer
from score_ray.prompts import PromptBuilder
from score_ray.tasks.base import Problem
from score_ray.trainer import ProblemSampler, Trainer
from score_ray.verify.scorers import score_completion

PHASES = ("generate", "verify", "learn", "sync")
STAGE = 1


class NaiveScore:
    """Single-process SCoRe: HF generate, in-process scoring, a plain torch update."""

    def __init__(self, cfg: Config, model_path: str, train: list[Problem]) -> None:
        self.cfg = cfg
        self.learner = PlainTorchLearner(cfg, model_path, full_logits)
        self.policy = self.learner.policy
        self.tokenizer = load_tokenizer(model_path)
        self.prompts = PromptBuilder(self.tokenizer, cfg.prompts)
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.sampler = ProblemSampler(train, cfg.train.seed)

    @torch.no_grad()
    def sample(self, prompts: list[list[int]], n: int) -> list[list[int]]:
        """n completions per prompt (HF generate on a left-padded batch), each cut after
        its first stop token, as vLLM returns them."""
        longest = max(len(ids) for ids in prompts)
        input_ids = torch.tensor([[self.pad_id] * (longest - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
        self.policy.eval()
        out = self.policy.generate(
            input_ids=input_ids,
            attention_mask=mask,
            do_sample=True,
            temperature=self.cfg.rollout.temperature,
            top_p=self.cfg.rollout.top_p,
            max_new_tokens=self.cfg.rollout.max_new_tokens,
            num_return_sequences=n,
            eos_token_id=sorted(self.prompts.stop_token_ids),
            pad_token_id=self.pad_id,
        )
        completions = []
        for row in out[:, longest:].tolist():
            stop = next((i for i, t in enumerate(row) if t in self.prompts.stop_token_ids), None)
            completions.append(row if stop is None else row[: stop + 1])
        return completions

    def step(self, seed: int) -> dict[str, float]:
        cfg, timings = self.cfg, {}
        samples = cfg.train.samples_per_prompt
        torch.manual_seed(seed)
        started = time.perf_counter()
        problems = self.sampler.next_batch(cfg.train.prompts_per_step)
        first = [self.prompts.first_prompt_ids(p.question) for p in problems]
        y1 = self.sample(first, samples)
        x1 = [first[i // samples] for i in range(len(y1))]
        bridges = [self.prompts.bridge_ids(ids) for ids in y1]
        y2 = self.sample([x + y + b for x, y, b in zip(x1, y1, bridges, strict=True)], 1)
        decode = self.tokenizer.decode
        traces = [
            Trace(
                problems[i // samples].uid,
                x1[i],
                y1[i],
                bridges[i],
                y2[i],
                decode(y1[i], skip_special_tokens=True),
                decode(y2[i], skip_special_tokens=True),
            )
            for i in range(len(y1))
        ]
        timings["generate"] = time.perf_counter() - started

        mark = time.perf_counter()
        scores = [
            score_completion(problems[i // samples], text, cfg.prompts.answer_format)
            for i, trace in enumerate(traces)
            for text in (trace.attempt1_text, trace.attempt2_text)
        ]
        pairs = torch.tensor(scores).view(-1, 2)
        timings["verify"] = time.perf_counter() - mark

        mark = time.perf_counter()
        reward1, reward2 = attempt_rewards(
            STAGE, pairs[:, 0], pairs[:, 1], cfg.algo.alpha, cfg.algo.stage1_train_attempt1
        )
        groups = (cfg.train.prompts_per_step, samples)
        advantage1 = rloo_advantages(reward1.view(groups)).flatten()
        advantage2 = rloo_advantages(reward2.view(groups)).flatten()
        batch = collate_traces(traces, self.pad_id)
        shard = LearnerShard(batch, advantage1, advantage2, torch.ones_like(advantage1))
        self.learner.train_step(shard, STAGE)
        timings["learn"] = time.perf_counter() - mark
        timings["sync"] = 0.0  # one process, one copy of the weights
        timings["step"] = time.perf_counter() - started
        return timings


def score_ray_step(trainer: Trainer, stream: bool) -> dict[str, float]:
    trainer.cfg.rollout.stream_verify = stream
    record = trainer.step(STAGE)
    timings = {phase: record[f"time/{phase}"] for phase in PHASES}
    timings["verify_busy"] = record["time/verify_busy"]
    timings["step"] = record["time/step"]
    return timings


def summarize(steps: list[dict[str, float]], traces_per_step: int) -> dict[str, Any]:
    """Totals over the timed steps: traces per second and each phase's share of step time."""
    total = sum(s["step"] for s in steps)
    summary: dict[str, Any] = {
        "step_s_mean": total / len(steps),
        "traces_per_s": traces_per_step * len(steps) / total,
        "steps": steps,
    }
    for phase in (*PHASES, "verify_busy"):
        if phase in steps[0]:
            summary[f"{phase}_s_mean"] = sum(s[phase] for s in steps) / len(steps)
            summary[f"{phase}_share"] = sum(s[phase] for s in steps) / total
    return summary


LORA = ("learner.lora.rank=8", "learner.lora.alpha=16", "learner.lora.sync=merged")
PINNED = ("rollout.cpu_cores=[0]", "learner.cpu_cores=[1]")
LOOPS: dict[str, tuple[str, ...]] = {
    "sync": (),
    "one-step-off": ("train.max_staleness=1",),
    "one-step-off pinned": ("train.max_staleness=1", *PINNED),
    "sync LoRA": LORA,
    "one-step-off LoRA": ("train.max_staleness=1", *LORA),
    "one-step-off LoRA pinned": ("train.max_staleness=1", *PINNED, *LORA),
}


def compare_loops(args: argparse.Namespace, base: list[str]) -> None:
    """The `--loops` comparison (module docstring): traces trained per second per loop."""
    loops = {name: LOOPS[name] for name in args.loop or LOOPS}
    if len(os.sched_getaffinity(0)) < 2:  # pinned loops need two cores to pin apart
        loops = {name: over for name, over in loops.items() if not set(PINNED) <= set(over)}
    init_ray()
    results: dict[str, Any] = {}
    naive_steps: list[dict[str, float]] = []
    for name, overrides in loops.items():
        # steps + 2 in the schedule: the warm-up, the timed steps, and one more that each
        # timed step's one-step-off prefetch generates (never learned on).
        cfg = bench_config(
            args.model, *base, f"train.stage1_steps={args.steps + 2}", *overrides, base=args.config
        )
        shutil.rmtree(args.out_dir, ignore_errors=True)
        model_path, train, held_out = prepare_inputs(cfg)
        trainer = Trainer(cfg, model_path, train, held_out)
        steps = []
        try:
            for index in range(args.steps + 1):
                record = trainer.step(STAGE)
                timings = {
                    "step": record["time/step"],
                    "learn": record["time/learn"],
                    "sync": record["time/sync"],
                    "generate": record["time/generate"],
                    "wait_rollout": record.get("time/wait_rollout", 0.0),
                }
                print(f"{name} step {index}: {timings['step']:.2f} s", flush=True)
                if index:
                    steps.append(timings)
        finally:
            trainer.rollouts.shutdown()
            trainer.actors.shutdown()
        results[name] = {"overrides": list(overrides), **summarize(steps, cfg.traces_per_step)}
        results[name]["wait_rollout_s_mean"] = sum(s["wait_rollout"] for s in steps) / len(steps)
    cfg = bench_config(args.model, *base, base=args.config)
    model_path, train, _ = prepare_inputs(cfg)
    naive = NaiveScore(cfg, model_path, train)
    for index in range(args.steps + 1):
        timings = naive.step(seed=index)
        print(f"naive step {index}: {timings['step']:.2f} s", flush=True)
        if index:
            naive_steps.append(timings)
    results["naive"] = summarize(naive_steps, cfg.traces_per_step)
    naive_rate = results["naive"]["traces_per_s"]
    rows = []
    for name, summary in results.items():
        summary["speedup_vs_naive"] = summary["traces_per_s"] / naive_rate
        rows.append(
            [
                name,
                summary["step_s_mean"],
                summary["traces_per_s"],
                summary["speedup_vs_naive"],
                summary.get("learn_s_mean", 0.0),
                summary.get("wait_rollout_s_mean", 0.0),
            ]
        )
    header = ["loop", "step s", "traces/s", "x naive", "learn s", "wait rollout s"]
    print(table(header, rows))
    data = {
        "config": str(args.config),
        "rollout_dtype": cfg.rollout.dtype,
        "traces_per_step": cfg.traces_per_step,
        "prompts_per_step": args.prompts,
        "samples_per_prompt": args.samples,
        "max_new_tokens": args.max_new_tokens,
        "timed_steps_per_loop": args.steps,
        "note": "loops run one after another (not alternating); the machine may be shared",
        "loops": results,
    }
    label = args.model if args.config == TINY_CONFIG else f"{args.model}-{args.config.stem}"
    if args.loop:  # a subset: a file of its own, so that it never replaces the full comparison
        label += "-" + "_".join(name.replace(" ", "-").lower() for name in loops)
    print(f"wrote {write_result('step_throughput-loops', label, data)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="tiny-llama")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode")
    parser.add_argument("--prompts", type=int, default=4, help="train.prompts_per_step")
    parser.add_argument("--samples", type=int, default=4, help="train.samples_per_prompt")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "bench_step")
    parser.add_argument(
        "--config", type=Path, default=TINY_CONFIG, help="task, prompts and learner settings"
    )
    parser.add_argument(
        "--loops", action="store_true", help="sync vs one-step-off (and LoRA, pinned) loops"
    )
    parser.add_argument(
        "--loop",
        action="append",
        choices=list(LOOPS),
        help="with --loops: only this loop (repeatable; the naive loop always runs)",
    )
    args = parser.parse_args()
    if args.loops:
        compare_loops(
            args,
            [
                f"train.prompts_per_step={args.prompts}",
                f"train.samples_per_prompt={args.samples}",
                f"rollout.max_new_tokens={args.max_new_tokens}",
                "model.max_model_len=1024",
                "train.stage2_steps=0",
                "train.checkpoint_every=0",
                "verifier.num_workers=2",
                f"output_dir={args.out_dir}",
            ],
        )
        return

    cfg = bench_config(
        args.model,
        f"train.prompts_per_step={args.prompts}",
        f"train.samples_per_prompt={args.samples}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        "model.max_model_len=1024",
        f"train.stage1_steps={2 * (args.steps + 1)}",
        "train.stage2_steps=0",
        "train.checkpoint_every=0",
        "verifier.num_workers=2",
        f"output_dir={args.out_dir}",
        base=args.config,
    )
    shutil.rmtree(args.out_dir, ignore_errors=True)  # the Trainer appends to metrics.jsonl
    model_path, train, held_out = prepare_inputs(cfg)
    init_ray()
    trainer = Trainer(cfg, model_path, train, held_out)
    naive = NaiveScore(cfg, model_path, train)
    modes: dict[str, list[dict[str, float]]] = {"stream": [], "batch": [], "naive": []}
    for index in range(args.steps + 1):  # step 0 of each mode is its warm-up
        # Rotate the order, so that no mode always follows the same one (a naive step
        # leaves this process's caches and threads in another state than an actor step).
        order = list(modes)[index % 3 :] + list(modes)[: index % 3]
        for mode in order:
            if mode == "naive":
                timings = naive.step(seed=index)
            else:
                timings = score_ray_step(trainer, stream=mode == "stream")
            print(f"step {index} {mode}: {timings['step']:.2f} s", flush=True)
            if index:
                modes[mode].append(timings)
    trainer.actors.shutdown()

    traces = cfg.traces_per_step
    summaries = {mode: summarize(steps, traces) for mode, steps in modes.items()}
    naive_rate = summaries["naive"]["traces_per_s"]
    for summary in summaries.values():
        summary["speedup_vs_naive"] = summary["traces_per_s"] / naive_rate
    rows = [
        [
            {"stream": "score-ray stream", "batch": "score-ray batch", "naive": "naive"}[mode],
            s["step_s_mean"],
            s["traces_per_s"],
            s["speedup_vs_naive"],
            *(f"{100 * s[f'{phase}_share']:.1f}%" for phase in PHASES),
        ]
        for mode, s in summaries.items()
    ]
    header = ["run", "step s", "traces/s", "x naive", *(f"{p} %" for p in PHASES)]
    print(table(header, rows))
    data = {
        "config": str(args.config),
        "rollout_dtype": cfg.rollout.dtype,
        "traces_per_step": traces,
        "prompts_per_step": args.prompts,
        "samples_per_prompt": args.samples,
        "max_new_tokens": args.max_new_tokens,
        "timed_steps_per_mode": args.steps,
        "targets": {"speedup_vs_naive": 3.0, "verify_share": 0.05},
        "modes": summaries,
    }
    label = args.model if args.config == TINY_CONFIG else f"{args.model}-{args.config.stem}"
    print(f"wrote {write_result('step_throughput', label, data)}")


if __name__ == "__main__":
    main()
