"""`score-ray sft`: STaR, Pair-SFT or gold-answer SFT on Ray Train (docs/sft.md).

    score-ray sft --config conf/demo.yaml --method star output_dir=runs/star sft.rounds=2
    score-ray sft --config conf/demo.yaml --method pair_sft output_dir=runs/pair
    score-ray sft --config conf/demo.yaml --method gold output_dir=runs/gold
    score-ray sft --resume runs/star          # a killed run goes on where it stopped

OUTPUT_DIR/final is an HF folder (`score-ray eval model.path=OUTPUT_DIR`, vLLM and
transformers load it; `score-ray train model.path=OUTPUT_DIR/final` starts SCoRe from it);
OUTPUT_DIR/sft_summary.json reports every round: samples, how many were kept, whether it
trained, its losses.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from score_ray.config import SFT_METHODS, Config, ConfigError, load_config
from score_ray.launch import add_config_arguments, resumed_config


def add_parser(commands: Any) -> None:
    """Register `score-ray sft` on the CLI's subparsers."""
    parser = commands.add_parser("sft", help="STaR / Pair-SFT / gold-answer SFT on Ray Train")
    add_config_arguments(parser, "key=value overrides, e.g. output_dir=DIR sft.rounds=2")
    parser.add_argument("--method", choices=SFT_METHODS, help="sets sft.method")
    parser.add_argument(
        "--resume",
        metavar="OUTPUT_DIR",
        help="continue the SFT run in OUTPUT_DIR (its config.yaml) from where it stopped",
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from score_ray.launch import prepare_splits
    from score_ray.sft.run import run_sft

    cfg = sft_config(args)
    model_path, splits = prepare_splits(cfg)
    init_sft_ray(cfg)
    summary = run_sft(cfg, model_path, splits.train)
    for report in summary["rounds"]:
        state = (
            f"trained {report['steps']} steps, loss {report['losses'][0]:.3f} -> "
            f"{report['losses'][-1]:.3f}"
            if report["trained"]
            else report["note"]
        )
        print(f"round {report['round']}: kept {report['kept']}; {state}")
    final = summary["final"] or "none (no round trained)"
    print(f"final model: {final}  ->  {Path(cfg.output_dir) / 'sft_summary.json'}")
    return 0


def init_sft_ray(cfg: Config) -> None:
    """Join the configured cluster, or start a local Ray with CPUs enough for the rollout
    layout and for the Ray Train workers (a TorchTrainer waits for its CPUs forever)."""
    import math
    import os

    import ray

    from score_ray.launch import init_ray, local_cpus

    if ray.is_initialized() or cfg.ray_address or os.environ.get("RAY_ADDRESS"):
        init_ray(cfg)
        return
    trainers = math.ceil(cfg.sft.num_workers * cfg.sft.num_cpus)
    ray.init(address="local", num_cpus=max(local_cpus(cfg), trainers), include_dashboard=False)


def sft_config(args: argparse.Namespace) -> Config:
    """A fresh run's config (--method sets sft.method), or a resumed run's saved one."""
    method = [f"sft.method={args.method}"] if args.method else []
    if args.resume:
        return resumed_config(args.resume, args.config, [*args.overrides, *method], "an SFT run")
    cfg = load_config(args.config, [*args.overrides, *method])
    if (Path(cfg.output_dir) / "config.yaml").exists():
        raise ConfigError(
            f"output_dir: {cfg.output_dir} already holds a run; continue it with "
            f"`score-ray sft --resume {cfg.output_dir}` or choose another output_dir"
        )
    return cfg
