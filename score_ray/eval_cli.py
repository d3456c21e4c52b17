"""`score-ray eval`: greedy self-correction evaluation of a model or a finished run.

    score-ray eval --config conf/default.yaml model.path=runs/my-run output_dir=runs/my-run/eval
    score-ray eval --config conf/default.yaml model.path=smollm2-135m-instruct \\
        output_dir=runs/base-eval --attempts 3
    score-ray eval ... --parallel 32               # + majority vote over 32 samples
    score-ray eval ... --parallel 32 --attempts 2  # + 16 samples, each self-corrected once

`model.path` is a model (folder, hub id or alias) or a run folder (one holding `final/` and
`config.yaml`), whose `final/` is evaluated; without `--config` a run folder's own
`config.yaml` is used. The held-out split, prompts and scorer come from the config, exactly
as the trainer's evaluation uses them. Attempt k+1 is generated from the whole conversation
so far plus the correction instruction (`score_ray.evaluate.run_attempts`); up to
`MAX_ATTEMPTS` attempts.

Inference-time scaling (`--parallel N`, the paper's Fig. 6): besides the greedy attempts,
N first attempts per problem are sampled at `rollout.temperature` and majority-voted
(`score_ray.scaling`); with `--attempts 2` the first N/2 of them are also self-corrected once
(at the attempt-2 temperature) and the corrected answers voted on: the same budget spent
sequentially. Sampling goes through the training path (`RolloutGroup.sample_first_attempts`,
`RolloutGroup.generate` with given first attempts) and the same VerifierPool.

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
                         problem by problem. For a training run folder, "stage2": which
                         Stage II ran (rl, or star with each STaR round's kept revisions;
                         `score_ray.star_stage2`)
                         With --parallel: "scaling", the majority-vote and pass@b curves
                         at budgets b = 1, 2, 4, ... N for each scheme, with paired-bootstrap
                         CIs ({"parallel/majority@8": {"value", "ci", "method"}, ...})
    eval_problems.jsonl  per problem: question, gold answer, and each attempt's text,
                         extracted answer and reward; with --parallel, "samples": each
                         sampled answer and reward per scheme
    accuracy_per_turn.png      Acc@tk against k, with CIs (--attempts K >= 3 or --parallel)
    accuracy_vs_budget.png     majority vote (and pass@b) against the sample budget for
                               both schemes, with CIs (--parallel)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
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
from score_ray.report import BUDGET_PNG, TURNS_PNG, plot_budget, plot_turns
from score_ray.scaling import (
    SEQUENTIAL_ATTEMPTS,
    Answer,
    chains_for_budget,
    format_scaling,
    problem_curves,
    sample_budgets,
    scaling_summary,
    vote_keys,
)
from score_ray.star_stage2 import read_stage2
from score_ray.tasks.base import Problem
from score_ray.transitions import answer_change_metrics, transition_counts

log = logging.getLogger(__name__)

EVAL_JSON = "eval.json"
PROBLEMS_JSONL = "eval_problems.jsonl"
EVAL_CHUNK_PER_WORKER = 64
"""Problems per rollout worker per progress-bar tick."""
SPLITS = ("held_out", "dev")
MAX_ATTEMPTS = 5
"""Most greedy attempts `--attempts` takes: each adds a turn (and max_new_tokens + a bridge
to the context), and turns 3-5 are what people asked to see."""
VOTE_RULE = (
    "majority over classes of extracted answers the task's verifier counts as equal (math: "
    "math-verify; reasoning-gym: the dataset's scorer; code: normalised text); an answer that "
    "is missing, that the verifier scores unread or that it failed on casts no vote; ties split"
)
_EVAL_TRAIN_SIZE = 16
"""Training problems generated alongside the held-out split (unused; the split is the same)."""


def add_parser(commands: Any) -> None:
    """Register `score-ray eval` on the CLI's subparsers."""
    parser = commands.add_parser("eval", help="greedy K-attempt evaluation on the held-out split")
    add_config_arguments(parser, "key=value overrides: model.path=MODEL_OR_RUN output_dir=DIR")
    parser.add_argument(
        "--attempts",
        type=int,
        default=None,
        help=f"greedy attempts per problem, 2..{MAX_ATTEMPTS} (default 2); with --parallel: "
        "1 (parallel samples only, the default) or 2 (also N/2 samples self-corrected once)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=0,
        metavar="N",
        help="also sample N first attempts per problem at rollout.temperature and report "
        "majority vote and pass@b for budgets b = 1, 2, 4, ... N (default 0: off)",
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="held_out",
        help="held_out (reported numbers) or dev (task.dev_size problems, for choices)",
    )
    parser.set_defaults(func=main)


@dataclass(frozen=True)
class ScalingPlan:
    """The samples `--parallel N [--attempts 2]` asks for, besides the greedy attempts."""

    samples: int
    """N: sampled first attempts per problem, majority-voted (the parallel scheme)."""
    sequential: bool = False
    """Also self-correct the first N/2 of them once and vote on those (sequential scheme)."""


def eval_plan(attempts: int | None, parallel: int) -> tuple[int, ScalingPlan | None]:
    """The greedy attempts and the scaling samples the flags ask for, or ConfigError naming
    the flag that is wrong.

    Without --parallel, --attempts K (default 2) is the greedy evaluation, 2 <= K <= 5.
    With --parallel N, the greedy evaluation keeps its 2 attempts (its Acc@t1 is the
    baseline the curves start from) and --attempts picks the scaling scheme: 1 (default)
    parallel only, 2 parallel and sequential, which needs an even N to split the budget.
    """
    if parallel < 0:
        raise ConfigError(f"--parallel: must be >= 1 (or 0 for off), got {parallel}")
    if parallel == 0:
        attempts = 2 if attempts is None else attempts
        if attempts < 2:
            raise ConfigError(f"--attempts: must be >= 2, got {attempts}")
        if attempts > MAX_ATTEMPTS:
            raise ConfigError(
                f"--attempts: at most {MAX_ATTEMPTS} attempts are supported, got {attempts}"
            )
        return attempts, None
    scheme = 1 if attempts is None else attempts
    if scheme not in (1, SEQUENTIAL_ATTEMPTS):
        raise ConfigError(
            f"--attempts with --parallel: 1 (parallel samples) or {SEQUENTIAL_ATTEMPTS} "
            f"(each first attempt self-corrected once), got {scheme}"
        )
    if scheme == SEQUENTIAL_ATTEMPTS:
        try:
            chains_for_budget(parallel)
        except ValueError as error:
            raise ConfigError(f"--parallel {parallel} --attempts 2: {error}") from None
    return 2, ScalingPlan(parallel, sequential=scheme == SEQUENTIAL_ATTEMPTS)


def main(args: argparse.Namespace) -> int:
    attempts, scaling = eval_plan(args.attempts, args.parallel)
    cfg, run_dir = eval_config(args.config, args.overrides)
    report, rows = evaluate_model(cfg, attempts, args.split, scaling)
    if run_dir is not None:
        report["run_dir"] = str(run_dir)
        stage2 = read_stage2(run_dir)  # rl, or star with each round's kept revisions
        if stage2 is not None:
            report["stage2"] = stage2
    write_outputs(Path(cfg.output_dir), report, rows)
    print(format_summary({name: report[name] for name in report["metrics"]}, report["n"]))
    if "scaling" in report:
        print(format_scaling(report["scaling"]["curves"], report["scaling"]["budgets"]))
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
    cfg: Config, attempts: int, split: str = "held_out", scaling: ScalingPlan | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the evaluation on Ray: the report for eval.json and one row per problem; with
    `scaling`, also the sampled curves (eval.json's "scaling")."""
    started = time.perf_counter()
    model_path, problems, builder = load_held_out(cfg, attempts, split)
    runs, rewards, verify_stats, samples = generate_and_score(
        cfg, model_path, problems, builder, attempts, scaling
    )
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
    }
    if scaling is not None and samples is not None:
        report["scaling"] = scaling_report(samples, scaling, cfg)
        add_sample_rows(rows, samples)
    report.update(
        time_s=time.perf_counter() - started,
        config=resolved_config(cfg),
        # Last, being long: lets `score_ray.report` pair two evaluations by problem.
        problems={"uids": [p.uid for p in problems], "rewards": rewards},
    )
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


@dataclass
class Samples:
    """Extracted answers, rewards and vote keys of sampled attempts, [problem][sample]."""

    answers: list[list[Answer]]
    rewards: list[list[float]]
    keys: list[list[Answer]]
    """What the majority vote counts (`problem_vote_keys`): one key per class of answers."""


@dataclass
class ScalingSamples:
    """What the scaling curves are computed from (`ScalingPlan`)."""

    first: Samples
    """N first attempts per problem, sampled at rollout.temperature."""
    revised: Samples | None
    """The self-corrections of the first N/2 of them (sequential plan), else None."""
    vote_s: float = 0.0
    """Driver seconds spent grouping the answers into vote keys (`problem_vote_keys`)."""


def generate_and_score(
    cfg: Config,
    model_path: str,
    problems: list[Problem],
    builder: PromptBuilder,
    attempts: int,
    scaling: ScalingPlan | None = None,
) -> tuple[list[AttemptRun], list[list[float]], dict[str, float], ScalingSamples | None]:
    """K greedy attempts per problem on the rollout workers, scored by the verifier pool,
    and the samples `scaling` asks for from the same actors: the runs, rewards[k][i],
    the verifier fault counts (both passes summed) and the samples (None without any)."""
    from score_ray.launch import init_ray
    from score_ray.rollout.group import RolloutGroup
    from score_ray.verify.pool import VerifierPool

    init_ray(cfg)
    rollout = RolloutGroup(cfg, model_path)
    verifiers = VerifierPool(cfg.verifier, cfg.prompts.answer_format)
    samples, scaling_stats = None, {}
    try:
        first = [builder.first_prompt_ids(p.question) for p in problems]
        runs = run_in_chunks(first, attempts, group_sampler(rollout), builder.bridge_ids, cfg)
        items = [
            (problem, run.completions[k][1])
            for k in range(attempts)
            for problem, run in zip(problems, runs, strict=True)
        ]
        flat, stats = verifiers.score(items)
        if scaling is not None:
            samples, scaling_stats = sample_scaling(rollout, verifiers, problems, scaling, cfg)
    finally:
        rollout.shutdown()
        verifiers.shutdown()
    n = len(problems)
    metrics = stats.as_metrics()
    metrics = {name: value + scaling_stats.get(name, 0) for name, value in metrics.items()}
    return runs, [flat[k * n : (k + 1) * n] for k in range(attempts)], metrics, samples


def sample_scaling(
    rollout: Any, verifiers: Any, problems: list[Problem], plan: ScalingPlan, cfg: Config
) -> tuple[ScalingSamples, dict[str, float]]:
    """The scaling samples, drawn in chunks of problems (`sample_texts`) with a progress bar
    and then all scored in one VerifierPool call: the samples and the verifier fault counts.

    Chunk c is seeded with train.seed + c * rollout.num_workers; the group adds the worker
    index, so no two (chunk, worker) calls share a seed and no two problems share draws.
    """
    from tqdm import tqdm

    workers = cfg.rollout.num_workers
    chunk = EVAL_CHUNK_PER_WORKER * workers
    texts: list[list[str]] = []
    revised_texts: list[list[str]] = []
    with tqdm(total=len(problems), desc=f"samples x{plan.samples}", unit="problem") as bar:
        for number, start in enumerate(range(0, len(problems), chunk)):
            part = problems[start : start + chunk]
            firsts, revised = sample_texts(rollout, part, plan, cfg.train.seed + number * workers)
            texts += firsts
            revised_texts += revised or []
            bar.update(len(part))
    groups = texts + revised_texts
    items = [
        (problems[i % len(problems)], text) for i, group in enumerate(groups) for text in group
    ]
    flat, stats = verifiers.score(items)
    scored = unflatten(groups, flat)
    faulted = set(stats.faulted)
    verdicts = unflatten(groups, [i not in faulted for i in range(len(flat))])
    answer_format = cfg.prompts.answer_format
    started = time.perf_counter()
    n = len(problems)
    first = as_samples(texts, scored[:n], answer_format, problems, verdicts[:n])
    revised = None
    if plan.sequential:
        revised = as_samples(revised_texts, scored[n:], answer_format, problems, verdicts[n:])
    vote_s = time.perf_counter() - started
    return ScalingSamples(first, revised, vote_s), stats.as_metrics()


def sample_texts(
    rollout: Any, problems: list[Problem], plan: ScalingPlan, seed: int
) -> tuple[list[list[str]], list[list[str]] | None]:
    """The texts of N first attempts per problem and, for the sequential plan, of the
    corrections of the first N/2 of them, through the training path.

    The first attempts come from `RolloutGroup.sample_first_attempts` (as the offline pool
    draws them, at rollout.temperature). The first N/2 of each problem's are then given to
    `RolloutGroup.generate` as first attempts (as offline first attempts are in training),
    which adds one correction each at the attempt-2 temperature. Reusing them means both
    schemes vote on the same first attempts, and the sequential one costs N/2 generations
    more, not N.
    """
    firsts = rollout.sample_first_attempts(problems, plan.samples, seed)
    texts = [[attempt.text for attempt in per_problem] for per_problem in firsts]
    if not plan.sequential:
        return texts, None
    chains = chains_for_budget(plan.samples)
    given = [per_problem[:chains] for per_problem in firsts]
    traces = rollout.generate(problems, chains, False, seed, first_attempts=given)
    revised = [
        [trace.attempt2_text for trace in traces[i * chains : (i + 1) * chains]]
        for i in range(len(problems))
    ]
    return texts, revised


def unflatten(groups: list[list[Any]], flat: list[float]) -> list[list[float]]:
    """`flat` (one value per item of the concatenated `groups`) cut back into the groups."""
    out, start = [], 0
    for group in groups:
        out.append(flat[start : start + len(group)])
        start += len(group)
    return out


def as_samples(
    texts: list[list[str]],
    rewards: list[list[float]],
    answer_format: str,
    problems: list[Problem],
    verdicts: list[list[bool]],
) -> Samples:
    """[problem][sample] texts, their rewards and whether each reward is a verdict (not an
    error or timeout) -> extracted answers, rewards and vote keys."""
    from score_ray.verify.scorers import extract_answer

    answers = [[extract_answer(text, answer_format) for text in group] for group in texts]
    return Samples(answers, rewards, problem_vote_keys(problems, answers, verdicts))


def problem_vote_keys(
    problems: list[Problem], answers: list[list[Answer]], verdicts: list[list[bool]]
) -> list[list[Answer]]:
    """Each problem's vote keys (`score_ray.scaling.vote_keys`) under its verifier's own
    answer equivalence (`answer_agreement`). This runs in the driver, so an answer whose
    scoring raised or hung in a Verifier actor casts no vote and is never parsed here."""
    from score_ray.verify.scorers import answer_agreement

    return [
        vote_keys(
            [a if ok else None for a, ok in zip(group, oks, strict=True)],
            answer_agreement(problem),
        )
        for problem, group, oks in zip(problems, answers, verdicts, strict=True)
    ]


def scaling_report(samples: ScalingSamples, plan: ScalingPlan, cfg: Config) -> dict[str, Any]:
    """eval.json's "scaling": the curves with CIs and how they were sampled."""
    budgets = sample_budgets(plan.samples)
    first, revised = samples.first, samples.revised
    per_problem = [
        problem_curves(
            (first.keys[i], first.rewards[i]),
            None if revised is None else (revised.keys[i], revised.rewards[i]),
            budgets,
        )
        for i in range(len(first.answers))
    ]
    return {
        "samples": plan.samples,
        "schemes": ["parallel", "sequential"] if plan.sequential else ["parallel"],
        "budgets": budgets,
        "temperature": cfg.rollout.temperature,
        "attempt2_temperature": cfg.attempt2_temperature,
        "seed": cfg.train.seed,
        "vote": VOTE_RULE,
        "vote_s": samples.vote_s,
        "curves": scaling_summary(per_problem),
    }


def add_sample_rows(rows: list[dict[str, Any]], samples: ScalingSamples) -> None:
    """Each problem's sampled answers and rewards, per scheme, into its eval_problems row."""
    schemes = {"parallel": samples.first, "sequential": samples.revised}
    for i, row in enumerate(rows):
        row["samples"] = {
            name: [
                {"answer": answer, "reward": reward}
                for answer, reward in zip(part.answers[i], part.rewards[i], strict=True)
            ]
            for name, part in schemes.items()
            if part is not None
        }


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
    """eval.json, eval_problems.jsonl and, for more than two attempts or the scaling
    curves, their plots (an ordinary two-attempt evaluation writes no plot, as before)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / EVAL_JSON).write_text(json.dumps(report, indent=2) + "\n")
    with open(output_dir / PROBLEMS_JSONL, "w") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    if report["attempts"] > 2 or "scaling" in report:
        plot_turns(report, output_dir / TURNS_PNG)
    if "scaling" in report:
        plot_budget(report, output_dir / BUDGET_PNG)
