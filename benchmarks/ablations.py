"""The paper's Table 4 on our task: SCoRe and four ablations, same budget and seed.

    .venv/bin/python benchmarks/ablations.py                       # the demo's budget
    .venv/bin/python benchmarks/ablations.py --stage1-steps 4 --stage2-steps 6
    .venv/bin/python benchmarks/ablations.py --only score no_shaping train.eval_max_problems=50
    .venv/bin/python benchmarks/ablations.py --from-demo runs/demo   # reuse make demo's runs

Variants (each also runnable alone: `score-ray demo --config conf/demo.yaml --config
conf/ablations/NAME.yaml`):

    score          conf/demo.yaml as is: Stage I then Stage II
    single_turn    conf/ablations/single_turn.yaml: train attempt 1 only (r1), evaluate two attempts
    stage2_only    conf/ablations/stage2_only.yaml: no Stage I, all steps in Stage II
    no_shaping     conf/ablations/no_shaping.yaml: alpha = 0
    star_stage2    conf/ablations/star_stage2.yaml: Stage I, then STaR rounds instead of Stage II

The base model is evaluated once; every variant is trained from it with the same seed,
problems and step budget (stage2_only spends Stage I's steps in Stage II; star_stage2 spends
Stage II on one STaR round of as many sampled traces as the demo's Stage II, then SFT on the
successful revisions), then evaluated greedily on the whole held-out split with `score-ray
eval`. Prints one table (Acc@t1, Acc@t2, Delta, each with a 95% bootstrap CI), then how many
revisions each STaR round kept, and writes it as JSON.

A variant (or the base evaluation) already finished in `--output-dir` with the same resolved
config is reused, not run again, so a killed invocation picks up where it stopped and
variants measured one at a time (`--only`) add up to one table; `--rerun` redoes everything.

`--from-demo DIR` takes the base and SCoRe rows from a finished `make demo` output
directory instead of running them again: `make demo` is the SCoRe variant (conf/demo.yaml,
same seed), so this saves two evaluations and one training run. It refuses a demo run
whose resolved config differs from this run's SCoRe config (budget, overrides).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from score_ray.demo import config_args, run_cli
from score_ray.report import date_and_machine, markdown_table, read_eval, text_table, with_ci

DEMO_CONFIG = "conf/demo.yaml"
VARIANTS = {
    "score": ("SCoRe", None),
    "single_turn": ("single-turn RL", "conf/ablations/single_turn.yaml"),
    "stage2_only": ("Stage II only (no Stage I)", "conf/ablations/stage2_only.yaml"),
    "no_shaping": ("no reward shaping (alpha = 0)", "conf/ablations/no_shaping.yaml"),
    "star_stage2": ("STaR in Stage II", "conf/ablations/star_stage2.yaml"),
}
PAPER_MATH = {  # Kumar et al. (2024), Table 4: Gemini 1.5 Flash on MATH, (Acc@t1, Acc@t2)
    "score": (60.0, 64.4),
    "single_turn": (61.8, 59.4),
    "stage2_only": (59.2, 61.4),
    "no_shaping": (60.0, 62.6),
    # star_stage2: the paper reports this row too; not copied here until checked against it.
}
HEADER = ["variant", "Acc@t1 [95% CI]", "Acc@t2 [95% CI]", "Delta [95% CI]", "paper MATH t1/t2"]


def main() -> int:
    args = parse_args()
    out = Path(args.output_dir)
    budget = {"stage1": args.stage1_steps, "stage2": args.stage2_steps}
    started = time.perf_counter()
    results: dict[str, dict] = {}
    variants = list(args.only)
    if args.from_demo:
        results.update(demo_results(Path(args.from_demo), budget, args.overrides))
        variants = [name for name in variants if name != "score"]
    else:
        base_dir = out / "eval_base"
        if args.rerun or not evaluated_base(base_dir, args.overrides):
            code, _ = run_cli(
                ["eval", *config_args([DEMO_CONFIG]), *args.overrides, f"output_dir={base_dir}"]
            )
            if code:
                return code
        results["base"] = {"label": "base model", "eval": read_eval(base_dir), "seconds": 0.0}
    for name in variants:
        label, extra = VARIANTS[name]
        configs = [DEMO_CONFIG, *([extra] if extra else [])]
        steps = budget_overrides(name, budget)
        run_dir, eval_dir = out / name / "train", out / name / "eval"
        common = [*config_args(configs), *steps, *args.overrides]
        if not args.rerun and finished(run_dir, eval_dir, configs, [*steps, *args.overrides]):
            print(f"\n=== ablation {name}: {label}: reusing {eval_dir} ===", flush=True)
            results[name] = {"label": label, "eval": read_eval(eval_dir), "seconds": None}
            continue
        print(f"\n=== ablation {name}: {label} ===", flush=True)
        code, train_s = run_cli(["train", *common, f"output_dir={run_dir}"])
        if code:
            return code
        code, eval_s = run_cli(["eval", *common, f"model.path={run_dir}", f"output_dir={eval_dir}"])
        if code:
            return code
        results[name] = {"label": label, "eval": read_eval(eval_dir), "seconds": train_s + eval_s}
    rows = table_rows(results)
    print()
    print(text_table(HEADER, rows))
    for result in results.values():
        stage2 = result["eval"].get("stage2") or {}
        if stage2.get("stage2_method") == "star":  # how many revisions STaR had to train on
            print(f"{result['label']}: {stage2['note']}")
    record = {
        **date_and_machine(),
        "command": " ".join(sys.argv),
        "budget_steps": budget,
        "overrides": args.overrides,
        "from_demo": args.from_demo,
        "wall_s": time.perf_counter() - started,
        "variants": {
            name: {
                "label": r["label"],
                "n": r["eval"]["n"],
                "seconds": r["seconds"],
                "stage2": r["eval"].get("stage2"),
                **{
                    k: r["eval"][k] for k in ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i")
                },
            }
            for name, r in results.items()
        },
        "markdown": markdown_table(HEADER, rows),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


def demo_results(demo: Path, budget: dict[str, int], overrides: list[str]) -> dict[str, dict]:
    """The base and SCoRe rows of a finished `make demo` run whose resolved config is the one
    this script would train SCoRe with (same budget, no other differences but output_dir)."""
    summary_path, config_path = demo / "demo.json", demo / "train" / "config.yaml"
    for path in (summary_path, config_path):
        if not path.is_file():
            raise SystemExit(f"--from-demo: {path} is missing (did `make demo` finish?)")
    differing = config_differences(
        saved_config(config_path), [DEMO_CONFIG], [*budget_overrides("score", budget), *overrides]
    )
    if differing:
        raise SystemExit(
            f"--from-demo: {config_path} differs from this run's SCoRe config in {differing};"
            " rerun without --from-demo"
        )
    seconds = json.loads(summary_path.read_text())["step_s"]
    return {
        "base": {"label": "base model", "eval": read_eval(demo / "eval_base"), "seconds": 0.0},
        "score": {
            "label": VARIANTS["score"][0],
            "eval": read_eval(demo / "eval_trained"),
            "seconds": seconds["train"] + seconds["trained eval"],
        },
    }


def config_differences(saved: dict, configs: list[str], overrides: list[str]) -> list[str]:
    """Top-level config sections in which a run's saved resolved config differs from what
    `configs` + `overrides` resolve to now (output_dir aside). Keys the saved config lacks
    (added to the schema after that run) count as their defaults."""
    from omegaconf import OmegaConf

    from score_ray.config import Config, load_config

    expected = OmegaConf.to_container(OmegaConf.structured(load_config(configs, overrides)))
    saved = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(Config), saved))
    return sorted(
        key
        for key in expected.keys() | saved.keys()
        if key != "output_dir" and expected.get(key) != saved.get(key)
    )


def finished(run_dir: Path, eval_dir: Path, configs: list[str], overrides: list[str]) -> bool:
    """True when an earlier invocation trained this variant with the same resolved config and
    evaluated its final model, so a killed or partial run of this script does not redo it."""
    config_path, report_path = run_dir / "config.yaml", eval_dir / "eval.json"
    if not (config_path.is_file() and (run_dir / "final").is_dir() and report_path.is_file()):
        return False
    trained = json.loads(report_path.read_text()).get("run_dir")
    if trained is None or Path(trained).resolve() != run_dir.resolve():
        return False
    return not config_differences(saved_config(config_path), configs, overrides)


def evaluated_base(base_dir: Path, overrides: list[str]) -> bool:
    """True when an earlier invocation already evaluated the base model with this config."""
    report_path = base_dir / "eval.json"
    if not report_path.is_file():
        return False
    saved = json.loads(report_path.read_text())["config"]
    return not config_differences(saved, [DEMO_CONFIG], overrides)


def saved_config(path: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path))


def budget_overrides(name: str, budget: dict[str, int]) -> list[str]:
    """The same number of updates for every variant; stage2_only spends them all in Stage II."""
    if name == "stage2_only":
        return ["train.stage1_steps=0", f"train.stage2_steps={budget['stage1'] + budget['stage2']}"]
    if name == "star_stage2":  # Stage II is STaR rounds (conf/ablations/star_stage2.yaml)
        return [f"train.stage1_steps={budget['stage1']}", "train.stage2_steps=0"]
    return [f"train.stage1_steps={budget['stage1']}", f"train.stage2_steps={budget['stage2']}"]


def table_rows(results: dict[str, dict]) -> list[list[str]]:
    rows = []
    for name, result in results.items():
        report = result["eval"]
        cells = [
            with_ci(report[key], signed=key == "delta") for key in ("acc_t1", "acc_t2", "delta")
        ]
        paper = PAPER_MATH.get(name)
        paper_cell = f"{paper[0]:.1f} / {paper[1]:.1f}" if paper else ""
        rows.append([result["label"], *cells, paper_cell])
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage1-steps", type=int, default=6, help="SCoRe Stage I steps")
    parser.add_argument("--stage2-steps", type=int, default=8, help="SCoRe Stage II steps")
    parser.add_argument("--only", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--from-demo", help="take base and SCoRe from this make demo output")
    parser.add_argument("--output-dir", default="runs/ablations")
    parser.add_argument(
        "--rerun",
        action="store_true",
        help="train and evaluate every variant again, even one already finished in --output-dir",
    )
    parser.add_argument("--json", default="benchmarks/results/ablations.json")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
