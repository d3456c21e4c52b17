"""`score-ray eval`: greedy self-correction evaluation of a model or a finished run.

    score-ray eval --config conf/default.yaml model.path=runs/my-run output_dir=runs/my-run/eval
    score-ray eval --config conf/default.yaml model.path=smollm2-135m-instruct \\
        output_dir=runs/base-eval --attempts 3

`model.path` is a model (folder, hub id or alias) or a run folder (one holding `final/` and
`config.yaml`), whose `final/` is evaluated; without `--config` a run folder's own
`config.yaml` is used. The held-out split, prompts and scorer come from the config, exactly
as the trainer's evaluation uses them. Attempt k+1 is generated from the whole conversation
so far plus the correction instruction (`score_ray.evaluate.run_attempts`).

Writes to `output_dir`:
    eval.json            acc_t1, acc_t2, delta, delta_i2c, delta_c2i (acc_t3, ... with more
                         attempts), each {"value", "ci", "method"}: a 95% paired-bootstrap
                         interval, exact Clopper-Pearson for i->c and c->i (with "count");
                         delta also has McNemar's exact "mcnemar_p" and its "i2c", "c2i"
                         counts (`score_ray.evaluate.summarize`); split, n, transitions
                         (fixes, breaks, wrong first attempts), answer_changes (share of
                         second answers that differ from the first: all problems, and those
                         wrong at t1), model_path, the resolved config, verifier fault
                         counts, and "problems": {"uids", "rewards"} with rewards[k][i] for
                         attempt k+1 on problem uids[i], so two evaluations can be compared
                         problem by problem
    eval_problems.jsonl  per problem: question, gold answer, and each attempt's text,
                         extracted answer and reward
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from score_ray.config import Config, ConfigError, ConfigPaths, config_files, load_config
from score_ray.evaluate import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CONFIDENCE,
    AttemptRun,
    Sampler,
    format_summary,
    run_attempts,
    summarize,
)
from score_ray.launch import add_config_arguments
from score_ray.metrics import resolved_config
from score_ray.prompts import PromptBuilder
from score_ray.tasks.base import Problem
from score_ray.transitions import answer_change_metrics, transition_counts

log = logging.getLogger(__name__)

EVAL_JSON = "eval.json"
PROBLEMS_JSONL = "eval_problems.jsonl"
EVAL_CHUNK_PER_WORKER = 64
"""Problems per rollout worker per progress-bar tick."""
SPLITS = ("held_out", "dev")
_EVAL_TRAIN_SIZE = 16
"""Training problems generated alongside the held-out split (unused; the split is the same)."""


def add_parser(commands: Any) -> None:
    """Register `score-ray eval` on the CLI's subparsers."""
    parser = commands.add_parser("eval", help="greedy K-attempt evaluation on the held-out split")
    add_config_arguments(parser, "key=value overrides: model.path=MODEL_OR_RUN output_dir=DIR")
    parser.add_argument(
        "--attempts", type=int, default=2, help="attempts per problem (>= 2; default 2)"
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="held_out",
        help="held_out (reported numbers) or dev (task.dev_size problems, for choices)",
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.attempts < 2:
        raise ConfigError(f"--attempts: must be >= 2, got {args.attempts}")
    cfg, run_dir = eval_config(args.config, args.overrides)
    report, rows = evaluate_model(cfg, args.attempts, args.split)
    if run_dir is not None:
        report["run_dir"] = str(run_dir)
    write_outputs(Path(cfg.output_dir), report, rows)
    print(format_summary({name: report[name] for name in report["metrics"]}, report["n"]))
    print(f"model {report['model_path']}  ->  {Path(cfg.output_dir) / EVAL_JSON}")
    return 0


def is_run_dir(path: Path) -> bool:
    """A finished `score-ray train` output folder."""
    return (path / "final").is_dir() and (path / "config.yaml").is_file()


def eval_config(config_path: ConfigPaths, overrides: list[str]) -> tuple[Config, Path | None]:
    """The config to evaluate with, and the run folder if `model.path` names one.

    A run folder's `final/` becomes `model.path`; its `config.yaml` is the base config
    unless `--config` is given (the overrides apply on top either way).
    """
    cfg = load_config(config_path, overrides)
    run_dir = Path(cfg.model.path).expanduser()
    if not is_run_dir(run_dir):
        return cfg, None
    if not config_files(config_path):
        cfg = load_config(run_dir / "config.yaml", overrides)
    cfg.model.path = str(run_dir / "final")
    return cfg, run_dir


def evaluate_model(
    cfg: Config, attempts: int, split: str = "held_out"
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the evaluation on Ray: the report for eval.json and one row per problem."""
    started = time.perf_counter()
    model_path, problems, builder = load_held_out(cfg, attempts, split)
    runs, rewards, verify_stats = generate_and_score(cfg, model_path, problems, builder, attempts)
    summary = summarize(rewards)
    rows = problem_rows(problems, runs, rewards, cfg.prompts.answer_format)
    report = {
        **summary,  # acc_t1, acc_t2, delta, delta_i2c, delta_c2i, acc_t3, ...
        "metrics": list(summary),
        "split": split,
        "n": len(problems),
        "transitions": transition_counts(rewards[0], rewards[1]),
        "answer_changes": answer_change_metrics(
            [row["attempts"][0]["answer"] for row in rows],
            [row["attempts"][1]["answer"] for row in rows],
            rewards[0],
        ),
        "attempts": attempts,
        "model_path": model_path,
        "bootstrap": {
            "method": "paired percentile bootstrap over problems",
            "resamples": BOOTSTRAP_RESAMPLES,
            "seed": BOOTSTRAP_SEED,
            "confidence": CONFIDENCE,
        },
        "verify": verify_stats,
        "time_s": time.perf_counter() - started,
        "config": resolved_config(cfg),
        # Last, being long: lets `score_ray.report` pair two evaluations by problem.
        "problems": {"uids": [p.uid for p in problems], "rewards": rewards},
    }
    return report, rows


def load_held_out(
    cfg: Config, attempts: int, split: str = "held_out"
) -> tuple[str, list[Problem], PromptBuilder]:
    """The model folder, the problems of `split` (held_out or dev; length-filtered as in
    training) and the prompt builder; raises `cfg.model.max_model_len` to fit `attempts`."""
    from score_ray.launch import prepare_splits
    from score_ray.models import load_tokenizer

    if split not in SPLITS:
        raise ConfigError(f"--split: must be one of {list(SPLITS)}, got {split!r}")
    if split == "dev" and cfg.task.dev_size < 1:
        raise ConfigError("--split dev: task.dev_size is 0; set task.dev_size=N")
    # Neither held-out nor dev depends on train_size: generate few training problems.
    small_train = dataclasses.replace(cfg.task, train_size=_EVAL_TRAIN_SIZE)
    model_path, splits = prepare_splits(dataclasses.replace(cfg, task=small_train))
    problems = splits.dev if split == "dev" else splits.eval
    builder = PromptBuilder(load_tokenizer(model_path), cfg.prompts)
    first = [builder.first_prompt_ids(p.question) for p in problems]
    needed = context_needed(first, attempts, cfg.rollout.max_new_tokens, builder.max_bridge_len())
    cfg.model.max_model_len = max(cfg.model.max_model_len, needed)
    return model_path, problems, builder


def generate_and_score(
    cfg: Config, model_path: str, problems: list[Problem], builder: PromptBuilder, attempts: int
) -> tuple[list[AttemptRun], list[list[float]], dict[str, float]]:
    """K greedy attempts per problem on the rollout workers, scored by the verifier pool:
    the runs, rewards[k][i] and the verifier fault counts."""
    from score_ray.launch import init_ray
    from score_ray.rollout.group import RolloutGroup
    from score_ray.verify.pool import VerifierPool

    init_ray(cfg)
    rollout = RolloutGroup(cfg, model_path)
    verifiers = VerifierPool(cfg.verifier, cfg.prompts.answer_format)
    try:
        first = [builder.first_prompt_ids(p.question) for p in problems]
        runs = run_in_chunks(first, attempts, group_sampler(rollout), builder.bridge_ids, cfg)
        items = [
            (problem, run.completions[k][1])
            for k in range(attempts)
            for problem, run in zip(problems, runs, strict=True)
        ]
        flat, stats = verifiers.score(items)
    finally:
        rollout.shutdown()
        verifiers.shutdown()
    n = len(problems)
    return runs, [flat[k * n : (k + 1) * n] for k in range(attempts)], stats.as_metrics()


def run_in_chunks(
    first: list[list[int]], attempts: int, sample: Sampler, bridge: Any, cfg: Config
) -> list[AttemptRun]:
    """`run_attempts` over chunks of problems, with a progress bar: chunks big enough to
    keep every rollout worker's batch full, small enough to show progress on a CPU."""
    from tqdm import tqdm

    chunk = EVAL_CHUNK_PER_WORKER * cfg.rollout.num_workers
    runs: list[AttemptRun] = []
    with tqdm(total=len(first), desc="eval", unit="problem", dynamic_ncols=True) as bar:
        for start in range(0, len(first), chunk):
            part = first[start : start + chunk]
            runs += run_attempts(part, attempts, sample, bridge)
            bar.update(len(part))
    return runs


def context_needed(
    first: list[list[int]], attempts: int, max_new_tokens: int, bridge_len: int
) -> int:
    """Tokens the longest K-attempt conversation can reach (vLLM's max_model_len)."""
    longest = max((len(ids) for ids in first), default=0)
    return longest + attempts * max_new_tokens + (attempts - 1) * bridge_len


def group_sampler(rollout: Any, seed: int = 0) -> Sampler:
    """A greedy `Sampler` over the rollout group (which replaces a worker that dies)."""

    def sample(prompts: list[list[int]]) -> list[tuple[list[int], str]]:
        return rollout.continue_attempt(prompts, greedy=True, seed=seed)

    return sample


def problem_rows(
    problems: list[Problem],
    runs: list[AttemptRun],
    rewards: list[list[float]],
    answer_format: str,
) -> list[dict[str, Any]]:
    """One JSON-ready row per problem, for eval_problems.jsonl."""
    from score_ray.verify.scorers import extract_answer

    rows = []
    for i, (problem, run) in enumerate(zip(problems, runs, strict=True)):
        attempts = [
            {
                "text": text,
                "answer": extract_answer(text, answer_format),
                "reward": rewards[k][i],
                "tokens": len(ids),
            }
            for k, (ids, text) in enumerate(run.completions)
        ]
        rows.append(
            {
                "uid": problem.uid,
                "question": problem.question,
                "gold": problem.answer,
                "attempts": attempts,
            }
        )
    return rows


def write_outputs(output_dir: Path, report: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / EVAL_JSON).write_text(json.dumps(report, indent=2) + "\n")
    with open(output_dir / PROBLEMS_JSONL, "w") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
