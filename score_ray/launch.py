"""What every command does before its actors start: load the inputs, then join or start Ray.

`score-ray train` (cli.py), `score-ray eval` (eval_cli.py), `score-ray plan` (plan.py) and
the tests and benchmarks share these; they live here so that no command module imports
another.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from score_ray.config import Config, ConfigError, load_config
from score_ray.placement import layout
from score_ray.tasks.base import Problem

if TYPE_CHECKING:
    from score_ray.tasks import TaskSplits

log = logging.getLogger("score_ray")


def add_config_arguments(parser: Any, overrides_help: str) -> None:
    """`--config FILE` (repeatable) and `key=value` overrides: how every command takes a config."""
    parser.add_argument(
        "--config", action="append", help="YAML file merged over the defaults (repeatable)"
    )
    parser.add_argument("overrides", nargs="*", help=overrides_help)


def prepare_inputs(cfg: Config) -> tuple[str, list[Problem], list[Problem]]:
    """Model folder, training and held-out problems (`prepare_splits` without the dev split)."""
    model_path, splits = prepare_splits(cfg)
    return model_path, splits.train, splits.eval


def prepare_splits(cfg: Config) -> tuple[str, TaskSplits]:
    """Model folder and the problem splits (train, held-out, dev), length-filtered, few-shot
    examples kept out of held-out and dev; fails before Ray starts."""
    from score_ray.models import load_tokenizer, resolve_model_path
    from score_ray.prompts import PromptBuilder
    from score_ray.tasks import TaskSplits, drop_questions, load_task_splits
    from score_ray.trainer import filter_prompt_lengths

    model_path = resolve_model_path(cfg.model)
    builder = PromptBuilder(load_tokenizer(model_path), cfg.prompts)
    try:
        splits = load_task_splits(cfg.task)
    except ValueError as err:  # the task sources name the bad key
        raise ConfigError(str(err)) from None
    train, dropped_train = filter_prompt_lengths(splits.train, builder, cfg)
    held_out, dropped_eval = filter_prompt_lengths(splits.eval, builder, cfg)
    # A few-shot example is shown in every prompt: evaluating on it would measure recall.
    examples = [example.question for example in cfg.prompts.examples]
    held_out, dropped_examples = drop_questions(held_out, examples)
    dev, _ = filter_prompt_lengths(splits.dev, builder, cfg)
    dev, _ = drop_questions(dev, examples)
    log.info(
        "task %s/%s: %d train, %d eval, %d dev problems (%d malformed rows skipped, %d/%d too "
        "long dropped, %d held-out problems dropped as few-shot examples)",
        cfg.task.source,
        cfg.task.name,
        len(train),
        len(held_out),
        len(dev),
        splits.skipped_rows,
        dropped_train,
        dropped_eval,
        dropped_examples,
    )
    if not train or not held_out:
        raise ConfigError(
            "model.max_model_len: no problem fits in the context after the length filter "
            f"(train {len(train)}, eval {len(held_out)}); raise model.max_model_len or lower "
            "rollout.max_new_tokens"
        )
    return model_path, TaskSplits(train, held_out, splits.skipped_rows, dev)


def required_cpus(cfg: Config) -> float:
    """Ray CPUs the actors of the layout reserve in all."""
    return sum(demand.bundle["CPU"] * demand.count for demand in layout(cfg))


def init_ray(cfg: Config) -> None:
    """Join the cluster named by ray_address / RAY_ADDRESS, else start a local one."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    # "local": a new instance even when other Ray instances run on this machine (a bare
    # ray.init() would join the newest of them, and refuses num_cpus when it does).
    ray.init(address="local", num_cpus=local_cpus(cfg), include_dashboard=False)


def local_cpus(cfg: Config) -> int:
    """The CPUs a local Ray instance advertises: `score-ray plan` checks the same number.

    Actors are placed by logical CPUs; on a small machine the local node gets enough of
    them for the configured layout (the actors take turns anyway)."""
    return max(os.cpu_count() or 1, math.ceil(required_cpus(cfg)))


def resumed_config(
    run_dir: str, config_files: list[str] | None, overrides: list[str], what: str
) -> Config:
    """`--resume RUN_DIR`: the run's own saved config.yaml plus `overrides`; `what` names the
    kind of folder expected ("a run folder", "an SFT run") in the error when it is missing."""
    if config_files:
        raise ConfigError("--resume uses the run's own config.yaml; drop --config")
    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"--resume: {saved} not found (is {run_dir} {what}?)")
    return load_config(saved, [*overrides, f"output_dir={run_dir}"])
