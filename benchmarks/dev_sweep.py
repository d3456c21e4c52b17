"""Choose a self-correction config on the DEV split: train a variant, evaluate it on dev.

The held-out split is for reported numbers only; every choice (levers, temperatures, steps,
alpha, beta, lr) is made here, on `task.dev_size` problems disjoint from train and held-out.

    .venv/bin/python benchmarks/dev_sweep.py base --eval-only          # the base model on dev
    .venv/bin/python benchmarks/dev_sweep.py demo                      # conf/demo.yaml as is
    .venv/bin/python benchmarks/dev_sweep.py beta2_1 algo.beta2=1.0 rollout.attempt2_samples=2
    .venv/bin/python benchmarks/dev_sweep.py --table                   # print the table only
    .venv/bin/python benchmarks/dev_sweep.py --compare demo beta2_1    # beta2_1 - demo, paired

Each variant is `score-ray train --config conf/demo.yaml <overrides>` into runs/dev/NAME
(in-training evaluations capped at one problem: the numbers come from the next command),
then `score-ray eval --split dev` of its final model into runs/dev/NAME/eval_dev. A variant
already evaluated with the same resolved config is not run again. Every result, positive or
not, goes into benchmarks/results/dev_sweep.json with its command, the training signal it saw
(fixes and breaks summed over steps) and its wall time; `--table` prints them all.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from score_ray.demo import config_args, run_cli
from score_ray.report import date_and_machine, paired_change, problem_rewards, read_eval

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "dev_sweep.json"
DEV_SIZE = 200
COMMON = [f"task.dev_size={DEV_SIZE}", "train.eval_every=0", "train.eval_max_problems=1"]
"""Every variant: the same dev split; the trainer's own evaluations kept to one problem."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", help="variant name")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of conf/demo.yaml")
    parser.add_argument("--config", action="append", help="YAML (default conf/demo.yaml)")
    parser.add_argument("--out", default="runs/dev", help="folder of the variants' runs")
    parser.add_argument("--table", action="store_true", help="only print the results table")
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="B - A on the dev problems both evaluated, with a paired bootstrap CI",
    )
    parser.add_argument(
        "--eval-only", action="store_true", help="evaluate model.path on dev, no training"
    )
    args = parser.parse_intermixed_args()
    if args.compare:
        print(compare(*(Path(args.out) / name / "eval_dev" for name in args.compare)))
        return 0
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if args.name and not args.table:
        configs = config_args(args.config or ["conf/demo.yaml"])
        results[args.name] = run_variant(
            args.name, configs, args.overrides, Path(args.out), args.eval_only
        )
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


def run_variant(
    name: str, configs: list[str], overrides: list[str], out: Path, eval_only: bool
) -> dict:
    run_dir = out / name
    eval_dir = run_dir / "eval_dev"
    started = time.perf_counter()
    common = configs + COMMON + overrides
    if eval_only:
        commands = [["eval", "--split", "dev", *common, f"output_dir={eval_dir}"]]
    else:
        commands = [
            ["train", *common, f"output_dir={run_dir}"],
            ["eval", "--split", "dev", *common, f"model.path={run_dir}", f"output_dir={eval_dir}"],
        ]
    for argv in commands:
        code, _ = run_cli(argv)
        if code:
            raise SystemExit(f"variant {name}: `score-ray {' '.join(argv)}` exited {code}")
    report = json.loads((eval_dir / "eval.json").read_text())
    return {
        "command": [f"score-ray {' '.join(argv)}" for argv in commands],
        "overrides": overrides,
        "dev": {
            key: report[key]
            for key in ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i", "n")
            if key in report
        },
        "answer_changes": report.get("answer_changes"),
        "train_signal": train_signal(run_dir / "metrics.jsonl"),
        "wall_s": time.perf_counter() - started,
        **date_and_machine(),
    }


def compare(first: Path, second: Path) -> str:
    """Each metric's change from one variant's dev evaluation to another's, paired by problem
    (score_ray.report.paired_change: the statistics the demo's report uses)."""
    rewards = [problem_rewards(read_eval(folder), folder) for folder in (first, second)]
    paired = paired_change(*rewards)
    lines = [f"{second} - {first}", paired.note]
    for metric, entry in (paired.change or {}).items():
        low, high = entry["ci"]
        lines.append(f"  {metric:10s} {entry['value']:+.3f} [{low:+.3f}, {high:+.3f}]")
    return "\n".join(lines)


def train_signal(path: Path) -> dict | None:
    """Fixes and breaks sampled during training, summed over steps, per stage."""
    if not path.is_file():
        return None
    steps = [json.loads(line) for line in path.read_text().splitlines()]
    steps = [s for s in steps if "eval" not in s]
    summary: dict[str, dict[str, float]] = {}
    for record in steps:
        stage = summary.setdefault(f"stage{record['stage']}", {"steps": 0, "fixes": 0, "breaks": 0})
        stage["steps"] += 1
        stage["fixes"] += record.get("train/fixes", 0)
        stage["breaks"] += record.get("train/breaks", 0)
    summary["learn_s_per_step"] = sum(s["time/learn"] for s in steps) / max(len(steps), 1)
    return summary


def table(results: dict) -> str:
    def cell(entry: dict) -> str:
        value, (low, high) = entry["value"], entry["ci"]
        return f"{value:+.3f} [{low:+.3f}, {high:+.3f}]"

    lines = [
        "| variant | Acc@t1 | Acc@t2 | Delta [95% CI] | McNemar p | i->c | c->i "
        "| train fixes/breaks |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        signal = result.get("train_signal") or {}
        fixes = sum(v["fixes"] for k, v in signal.items() if k.startswith("stage"))
        breaks = sum(v["breaks"] for k, v in signal.items() if k.startswith("stage"))
        if "dev" not in result:  # a run stopped before its evaluation: its signal only
            lines.append(
                f"| {name} | - | - | {result.get('stopped', '-')} | - | - | - | "
                f"{fixes:.0f}/{breaks:.0f} |"
            )
            continue
        dev = result["dev"]
        lines.append(
            f"| {name} | {dev['acc_t1']['value']:.3f} | {dev['acc_t2']['value']:.3f} | "
            f"{cell(dev['delta'])} | {dev['delta'].get('mcnemar_p', float('nan')):.3g} | "
            f"{dev['delta_i2c']['value']:.3f} | {dev['delta_c2i']['value']:.3f} | "
            f"{fixes:.0f}/{breaks:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
