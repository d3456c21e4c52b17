"""The `score-ray sft` driver: rounds of sample -> score -> filter -> train, then final/.

    for each round k (star: sft.rounds; pair_sft, gold: one):
        examples  = the method's examples from the current model   (data.py; RL's actors)
        if too few: say so (log, round report), keep the current model
        else:       current = TorchTrainer(examples, from current)   (train.py; Ray Train)
    final/ = the last trained model

Everything a round produces is kept under OUTPUT_DIR/rounds/round_K/ (examples.jsonl, the
sampling report data.json, model/), and OUTPUT_DIR/sft_summary.json is rewritten after each
round. A re-run on the same folder (`score-ray sft --resume OUTPUT_DIR`) skips finished rounds,
reuses a round's examples instead of sampling again, and Ray Train resumes the round's
training from its newest checkpoint (OUTPUT_DIR/ray_train/round_K).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any

from score_ray.config import Config, save_config
from score_ray.prompts import PromptBuilder
from score_ray.sft.examples import SftExample
from score_ray.tasks.base import Problem

log = logging.getLogger("score_ray")

SUMMARY = "sft_summary.json"
ROUNDS = "rounds"
RAY_TRAIN = "ray_train"
FINAL = "final"


def run_sft(
    cfg: Config, model_path: str, problems: list[Problem], fail_after_step: int | None = None
) -> dict[str, Any]:
    """All rounds of `cfg.sft.method` from `model_path` on the training `problems`; returns
    the summary also written to OUTPUT_DIR/sft_summary.json. `fail_after_step` is a test
    hook: a Ray Train worker raises after that step's checkpoint (once per round)."""
    from score_ray.models import load_tokenizer

    started = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    builder = PromptBuilder(load_tokenizer(model_path), cfg.prompts)
    summary: dict[str, Any] = {
        "method": cfg.sft.method,
        "base_model": model_path,
        "rounds": [],
        "final": None,
    }
    current = model_path
    for index in range(cfg.sft.rounds):
        report = run_round(cfg, index, current, builder, problems, fail_after_step)
        summary["rounds"].append(report)
        if report["trained"]:
            current = report["model_out"]
        _write_json(out / SUMMARY, summary)
    if current != model_path:
        summary["final"] = str(publish_folder(Path(current), out / FINAL))
    else:
        log.warning("sft: no round had enough examples to train on; no final/ written")
    summary["time_s"] = time.perf_counter() - started
    _write_json(out / SUMMARY, summary)
    return summary


def run_round(
    cfg: Config,
    index: int,
    model_path: str,
    builder: PromptBuilder,
    problems: list[Problem],
    fail_after_step: int | None,
) -> dict[str, Any]:
    """One round: its examples (sampled now, or read back), then training unless too few."""
    folder = Path(cfg.output_dir) / ROUNDS / f"round_{index}"
    done = folder / "round.json"
    if done.is_file():  # finished before a restart
        return json.loads(done.read_text())
    started = time.perf_counter()
    examples, data = round_examples(cfg, index, model_path, builder, problems, folder)
    report: dict[str, Any] = {
        "round": index,
        "model_in": model_path,
        **data,
        "min_examples": cfg.sft.min_examples,
        "time_data_s": time.perf_counter() - started,
    }
    kept = len(examples)
    if kept < cfg.sft.min_examples:
        report.update(trained=False, model_out=model_path, note=too_few(cfg, index, kept))
        log.warning("sft: %s", report["note"])
    else:
        report.update(train_round(cfg, index, model_path, builder, examples, fail_after_step))
        log.info(
            "sft round %d: trained on %d examples, %d steps, loss %.4f -> %.4f",
            index,
            kept,
            report["steps"],
            report["losses"][0],
            report["losses"][-1],
        )
    report["time_s"] = time.perf_counter() - started
    _write_json(done, report)
    return report


def too_few(cfg: Config, index: int, kept: int) -> str:
    """The plain statement a round with too few examples gets, in the log and its report."""
    what = {
        "star": "successful revisions (attempt 1 wrong, attempt 2 right)",
        "pair_sft": "problems with both a wrong and a right first attempt",
        "gold": "gold examples",
    }[cfg.sft.method]
    return (
        f"round {index} has too few examples to train on: {kept} {what} < sft.min_examples="
        f"{cfg.sft.min_examples}; the round is skipped and the model is unchanged"
    )


def round_problems(cfg: Config, index: int, problems: list[Problem]) -> list[Problem]:
    """The round's training problems: a seeded draw of sft.problems_per_round (0: all)."""
    count = cfg.sft.problems_per_round
    if count == 0 or count >= len(problems):
        return list(problems)
    return random.Random(cfg.sft.seed * 1_000_003 + index).sample(problems, count)


def round_examples(
    cfg: Config,
    index: int,
    model_path: str,
    builder: PromptBuilder,
    problems: list[Problem],
    folder: Path,
) -> tuple[list[SftExample], dict[str, Any]]:
    """The round's examples and sampling report; read back from `folder` after a restart
    (sampling again would give other examples than the ones training had started on)."""
    from score_ray.sft.data import fit_context, gold_round

    saved, report_path = folder / "examples.jsonl", folder / "data.json"
    if report_path.is_file():
        rows = saved.read_text().splitlines()
        return [SftExample.from_json(json.loads(r)) for r in rows], json.loads(
            report_path.read_text()
        )
    chosen = round_problems(cfg, index, problems)
    if cfg.sft.method == "gold":
        examples, report = gold_round(cfg, builder, chosen)
    else:
        examples, report = sample_round(cfg, index, model_path, builder, chosen)
    examples, report["dropped_too_long"] = fit_context(examples, cfg.model.max_model_len)
    report["kept"] = len(examples)
    folder.mkdir(parents=True, exist_ok=True)
    saved.write_text("".join(json.dumps(e.to_json()) + "\n" for e in examples))
    _write_json(report_path, report)  # last: marks the examples as complete
    log.info("sft round %d (%s): %s", index, cfg.sft.method, _brief(report))
    return examples, report


def sample_round(
    cfg: Config, index: int, model_path: str, builder: PromptBuilder, problems: list[Problem]
) -> tuple[list[SftExample], dict[str, Any]]:
    """STaR or Pair-SFT samples from `model_path`, on RL's RolloutGroup and VerifierPool."""
    from score_ray.rollout.group import RolloutGroup
    from score_ray.sft.data import pair_round, star_round
    from score_ray.verify.pool import VerifierPool

    seed = cfg.sft.seed * 1_000_003 + index
    rollout = RolloutGroup(cfg, model_path)
    verifiers = VerifierPool(cfg.verifier, cfg.prompts.answer_format)
    try:
        if cfg.sft.method == "star":
            return star_round(cfg, rollout, verifiers, problems, seed)
        return pair_round(cfg, rollout, verifiers, builder, problems, seed)
    finally:  # free the CPUs / GPU for the Ray Train workers
        rollout.shutdown()
        verifiers.shutdown()


def train_round(
    cfg: Config,
    index: int,
    model_path: str,
    builder: PromptBuilder,
    examples: list[SftExample],
    fail_after_step: int | None,
) -> dict[str, Any]:
    """Ray Train on the round's examples; the trained HF folder goes to round_K/model."""
    import torch

    from score_ray.sft.train import STATE_FILE, fit

    started = time.perf_counter()
    checkpoint, metrics = fit(
        examples,
        model_path,
        int(builder.tokenizer.pad_token_id),
        cfg.sft,
        storage_path=str(Path(cfg.output_dir) / RAY_TRAIN),
        name=f"round_{index}",
        fail_after_step=fail_after_step,
    )
    state = torch.load(Path(checkpoint) / STATE_FILE, weights_only=False)
    model_out = publish_folder(
        Path(checkpoint), Path(cfg.output_dir) / ROUNDS / f"round_{index}" / "model"
    )
    return {
        "trained": True,
        "model_out": str(model_out),
        "checkpoint": checkpoint,
        "steps": int(state["step"]),
        "losses": [float(x) for x in state["losses"]],
        "resumed_at": state.get("resumed_at", []),
        "last_metrics": metrics,
        "time_train_s": time.perf_counter() - started,
    }


def publish_folder(checkpoint: Path, target: Path) -> Path:
    """Copy a checkpoint's HF folder (not its optimizer state) to `target`, atomically."""
    from score_ray.sft.train import STATE_FILE

    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(checkpoint, staging, ignore=shutil.ignore_patterns(STATE_FILE))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _brief(report: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in report.items() if not isinstance(v, dict))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
