"""Command line: `score-ray train | eval | demo | prepare-model`.

    score-ray train --config conf/tiny.yaml output_dir=/tmp/run learner.lr=1e-5
    score-ray train --resume /tmp/run          # continue from the newest checkpoint
    score-ray eval --config conf/default.yaml model.path=RUN_DIR output_dir=DIR [--attempts K]
    score-ray demo --config conf/demo.yaml --output-dir runs/demo   # eval, train, eval, report
    score-ray prepare-model [--which smollm2-135m-instruct|tiny-llama]

Config errors, missing files and an empty dataset are reported before Ray
starts. With RAY_ADDRESS set (or `ray_address=...`), the driver joins that
cluster; otherwise it starts a local one.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from score_ray.config import (
    EMBEDDED_MODEL,
    MODEL_ALIASES,
    Config,
    ConfigError,
    load_config,
)
from score_ray.demo import add_parser as add_demo_parser
from score_ray.eval_cli import add_parser as add_eval_parser

log = logging.getLogger("score_ray")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from score_ray.placement import LayoutError

    try:
        return args.func(args)
    except ConfigError as err:
        print(f"score-ray: {err}", file=sys.stderr)
        return 2
    except LayoutError as err:
        print(f"score-ray: {err}", file=sys.stderr)
        return 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="score-ray", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, dest="command")

    train = commands.add_parser("train", help="run SCoRe Stage I then Stage II")
    train.add_argument(
        "--config", action="append", help="YAML file merged over the defaults (repeatable)"
    )
    train.add_argument(
        "--resume",
        metavar="OUTPUT_DIR",
        help="continue the run in OUTPUT_DIR from its newest checkpoint, with its config.yaml",
    )
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. learner.lr=1e-5")
    train.set_defaults(func=_train)

    prepare = commands.add_parser("prepare-model", help="build a cached HF folder for an alias")
    prepare.add_argument("--which", default=EMBEDDED_MODEL, choices=MODEL_ALIASES)
    prepare.add_argument("--cache-dir", default="~/.cache/score-ray")
    prepare.set_defaults(func=_prepare_model)

    add_eval_parser(commands)  # score-ray eval: score_ray/eval_cli.py
    add_demo_parser(commands)  # score-ray demo: score_ray/demo.py
    return parser


def _prepare_model(args: argparse.Namespace) -> int:
    from score_ray.models import prepare_model_main

    prepare_model_main(args.cache_dir, args.which)
    return 0


def _train(args: argparse.Namespace) -> int:
    cfg = _train_config(args)
    model_path, splits = prepare_splits(cfg)
    init_ray(cfg)
    from score_ray.trainer import Trainer

    trainer = Trainer(
        cfg, model_path, splits.train, splits.eval, resume=bool(args.resume), dev=splits.dev
    )
    final = trainer.run()
    print(
        f"done: Acc@t1 {final['acc_t1']:.3f}  Acc@t2 {final['acc_t2']:.3f}  "
        f"Delta {final['delta']:+.3f}  -> {cfg.output_dir}"
    )
    return 0


def _train_config(args: argparse.Namespace) -> Config:
    """A fresh run's config, or a resumed run's saved config (plus overrides)."""
    if args.resume:
        if args.config:
            raise ConfigError("--resume uses the run's own config.yaml; drop --config")
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume: {saved} not found (is {args.resume} a run folder?)")
        return load_config(saved, [*args.overrides, f"output_dir={args.resume}"])
    cfg = load_config(args.config, args.overrides)
    if (Path(cfg.output_dir) / "metrics.jsonl").exists():
        raise ConfigError(
            f"output_dir: {cfg.output_dir} already holds a run; continue it with "
            f"`score-ray train --resume {cfg.output_dir}` or choose another output_dir"
        )
    _check_checkpoint_uri_is_new(cfg)
    return cfg


def _check_checkpoint_uri_is_new(cfg: Config) -> None:
    """A fresh run's train.checkpoint_uri must be reachable and hold no run's checkpoints
    (a resume would mix them up); checked before Ray starts."""
    uri = cfg.train.checkpoint_uri
    if not uri:
        return
    from score_ray.checkpoint import check_reachable, latest_checkpoint

    try:
        check_reachable(uri)
        found = latest_checkpoint(uri)
    except (OSError, ValueError) as err:  # pyarrow: unreachable store, no bucket, no access
        raise ConfigError(f"train.checkpoint_uri: cannot read {uri}: {err}") from None
    if found is not None:
        raise ConfigError(
            f"train.checkpoint_uri: {uri} already holds checkpoints ({found}); resume that run "
            "with `score-ray train --resume OUTPUT_DIR` or choose another train.checkpoint_uri"
        )


def prepare_inputs(cfg: Config):
    """Model folder, training and held-out problems (`prepare_splits` without the dev split)."""
    model_path, splits = prepare_splits(cfg)
    return model_path, splits.train, splits.eval


def prepare_splits(cfg: Config):
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
    return (
        cfg.rollout.num_workers * cfg.rollout.num_cpus
        + cfg.learner.world_size * cfg.learner.num_cpus
        + cfg.verifier.num_workers * cfg.verifier.num_cpus
    )


def init_ray(cfg: Config) -> None:
    """Join the cluster named by ray_address / RAY_ADDRESS, else start a local one."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    # Actors are placed by logical CPUs; on a small machine give the local node
    # enough of them for the configured layout (the actors take turns anyway).
    cpus = max(os.cpu_count() or 1, int(required_cpus(cfg) + 0.999))
    # "local": a new instance even when other Ray instances run on this machine (a bare
    # ray.init() would join the newest of them, and refuses num_cpus when it does).
    ray.init(address="local", num_cpus=cpus, include_dashboard=False)


if __name__ == "__main__":
    sys.exit(main())
