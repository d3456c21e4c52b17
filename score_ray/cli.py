"""Command line: `score-ray train | eval | demo | plan | sft | prepare-model`.

    score-ray train --config conf/tiny.yaml output_dir=/tmp/run learner.lr=1e-5
    score-ray train --resume /tmp/run          # continue from the newest checkpoint
    score-ray train ... train.stage2_method=star train.stage2_steps=0   # STaR in Stage II
    score-ray eval --config conf/default.yaml model.path=RUN_DIR output_dir=DIR [--attempts K]
    score-ray eval ... --parallel 32 [--attempts 2]  # + majority vote, parallel vs sequential
    score-ray demo --config conf/demo.yaml --output-dir runs/demo   # eval, train, eval, report
    score-ray plan --config C [--cluster cluster/aws-gpu.yaml]   # dry run: layout, memory
    score-ray sft --config conf/demo.yaml --method star|pair_sft|gold output_dir=DIR
    score-ray prepare-model [--which smollm2-135m-instruct|tiny-llama]

Config errors, missing files and an empty dataset are reported before Ray
starts. With RAY_ADDRESS set (or `ray_address=...`), the driver joins that
cluster; otherwise it starts a local one.
"""

from __future__ import annotations

import argparse
import logging
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
from score_ray.launch import add_config_arguments, init_ray, prepare_splits, resumed_config
from score_ray.plan import add_parser as add_plan_parser
from score_ray.sft.cli import add_parser as add_sft_parser
from score_ray.sft.cli import init_sft_ray

log = logging.getLogger("score_ray")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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


def build_parser() -> argparse.ArgumentParser:
    """The whole `score-ray` command line (tests parse the docs' commands with it)."""
    parser = argparse.ArgumentParser(prog="score-ray", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, dest="command")

    train = commands.add_parser("train", help="run SCoRe Stage I then Stage II")
    add_config_arguments(train, "key=value overrides, e.g. learner.lr=1e-5")
    train.add_argument(
        "--resume",
        metavar="OUTPUT_DIR",
        help="continue the run in OUTPUT_DIR from its newest checkpoint, with its config.yaml",
    )
    train.set_defaults(func=_train)

    prepare = commands.add_parser("prepare-model", help="build a cached HF folder for an alias")
    prepare.add_argument("--which", default=EMBEDDED_MODEL, choices=MODEL_ALIASES)
    prepare.add_argument("--cache-dir", default="~/.cache/score-ray")
    prepare.set_defaults(func=_prepare_model)

    add_eval_parser(commands)  # score-ray eval: score_ray/eval_cli.py
    add_demo_parser(commands)  # score-ray demo: score_ray/demo.py
    add_plan_parser(commands)  # score-ray plan: score_ray/plan.py
    add_sft_parser(commands)  # score-ray sft: score_ray/sft/cli.py
    return parser


def _prepare_model(args: argparse.Namespace) -> int:
    from score_ray.models import prepare_model_main

    prepare_model_main(args.cache_dir, args.which)
    return 0


def _train(args: argparse.Namespace) -> int:
    cfg = _train_config(args)
    model_path, splits = prepare_splits(cfg)
    star = cfg.train.stage2_method == "star"
    if star:
        init_sft_ray(cfg)  # CPUs for the Ray Train workers too
    else:
        init_ray(cfg)
    from score_ray.trainer import Trainer

    trainer = Trainer(
        cfg, model_path, splits.train, splits.eval, resume=bool(args.resume), dev=splits.dev
    )
    final = trainer.run()
    print(
        f"{'Stage I' if star else 'done'}: Acc@t1 {final['acc_t1']:.3f}  "
        f"Acc@t2 {final['acc_t2']:.3f}  Delta {final['delta']:+.3f}  -> {cfg.output_dir}"
    )
    if star:  # the paper's "STaR in Stage II": STaR rounds from the Stage I policy
        from score_ray.star_stage2 import run_star_stage2

        trainer.release_actors()  # their CPUs (or GPUs) go to STaR's actors and workers
        report = run_star_stage2(cfg, splits.train)
        print(report["note"])
        print(f"evaluate final/ with `score-ray eval model.path={cfg.output_dir}`")
    return 0


def _train_config(args: argparse.Namespace) -> Config:
    """A fresh run's config, or a resumed run's saved config (plus overrides)."""
    if args.resume:
        return resumed_config(args.resume, args.config, args.overrides, "a run folder")
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


if __name__ == "__main__":
    sys.exit(main())
