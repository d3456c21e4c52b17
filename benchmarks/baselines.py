"""The paper's comparison on our task: base, STaR, Pair-SFT and SCoRe, same task and prompts.

    .venv/bin/python benchmarks/baselines.py --from-demo runs/demo     # after `make demo`
    .venv/bin/python benchmarks/baselines.py --from-demo runs/demo --only pair_sft

The base and SCoRe rows come from a finished `make demo` output directory (its base and
trained held-out evaluations; SCoRe is `conf/demo.yaml`). The two SFT baselines are trained
from the same base model on the same task with `score-ray sft` (Ray Train; samples drawn and
scored by the RL actors), then evaluated greedily on the whole held-out split with `score-ray
eval`, like the demo's rows:

    star       score-ray sft --method star sft.rounds=2: successful revisions of the model's
               own two-attempt traces (attempt 1 wrong, attempt 2 right), two rounds
    pair_sft   score-ray sft --method pair_sft: a wrong and a right first attempt of the base
               model joined as x1, y_wrong, correction instruction, y_right

A STaR run in which no round kept `sft.min_examples` revisions trains nothing (its
`sft_summary.json` has `final: null`); its row is then the base model's evaluation, and the
table says so rather than evaluating the unchanged model again.

Prints one table (Acc@t1, Acc@t2, Delta, i->c, c->i with 95% CIs, the paper's MATH rows),
each SFT run's time and peak memory (PSS of the process tree) and what each round kept, and
writes it all as JSON. A method already finished in `--output-dir` is reused; `--rerun`
redoes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from score_ray.demo import GIB, MemoryPeak, config_args, run_cli
from score_ray.report import date_and_machine, markdown_table, read_eval, text_table, with_ci

DEMO_CONFIG = "conf/demo.yaml"
METHODS = {
    "star": ("STaR (2 rounds)", ["sft.rounds=2"]),
    "pair_sft": ("Pair-SFT", []),
}
PAPER_MATH = {  # Kumar et al. (2024), Tables 2 and 4: Gemini 1.5 Flash on MATH, Acc@t1 / Acc@t2
    "base": (52.6, 41.4),
    "star": (53.6, 54.0),
    "pair_sft": (52.4, 54.2),
    "score": (60.0, 64.4),
}
METRICS = ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i")
HEADER = [
    "model",
    "Acc@t1 [95% CI]",
    "Acc@t2 [95% CI]",
    "Delta(t1,t2) [95% CI]",
    "i->c [95% CI]",
    "c->i [95% CI]",
    "paper MATH t1 / t2",
]


def main() -> int:
    args = parse_args()
    out = Path(args.output_dir)
    demo = Path(args.from_demo)
    started = time.perf_counter()
    results = {"base": {"label": "base model", "eval": read_eval(demo / "eval_base")}}
    for name in args.only:
        result = run_method(name, out / name, args.overrides, args.rerun, demo)
        if result is None:
            return 1
        results[name] = result
    results["score"] = {"label": "SCoRe (`make demo`)", "eval": read_eval(demo / "eval_trained")}
    order = ["base", *METHODS, "score"]  # the paper's order, whatever order they ran in
    results = {name: results[name] for name in order if name in results}
    rows = table_rows(results)
    print()
    print(text_table(HEADER, rows))
    for result in results.values():
        for line in result.get("rounds_notes", []):
            print(f"{result['label']}: {line}")
    record = {
        **date_and_machine(),
        "command": " ".join(sys.argv),
        "from_demo": str(demo),
        "overrides": args.overrides,
        "wall_s": time.perf_counter() - started,
        "rows": {
            name: {
                "label": r["label"],
                "n": r["eval"]["n"],
                **{key: r["eval"][key] for key in METRICS},
                **{k: r[k] for k in ("sft", "commands") if k in r},
            }
            for name, r in results.items()
        },
        "paper_math": PAPER_MATH,
        "markdown": markdown_table(HEADER, rows),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


def run_method(
    name: str, run_dir: Path, overrides: list[str], rerun: bool, demo: Path
) -> dict | None:
    """Train one SFT baseline (unless already finished) and evaluate it; None on a failure."""
    label, extra = METHODS[name]
    common = [*config_args([DEMO_CONFIG]), *extra, *overrides]
    sft_argv = ["sft", *config_args([DEMO_CONFIG]), "--method", name, *extra, *overrides]
    sft_argv.append(f"output_dir={run_dir}")
    eval_dir = run_dir / "eval"
    eval_argv = ["eval", *common, f"model.path={run_dir}", f"output_dir={eval_dir}"]
    summary_path = run_dir / "sft_summary.json"
    measured = {}
    if rerun or not summary_path.is_file():
        print(f"\n=== baseline {name}: {label} ===", flush=True)
        with MemoryPeak() as memory:
            code, seconds = run_cli(sft_argv)
        if code:
            return None
        measured = {"wall_s": seconds, "peak_memory_gib": memory.peak_bytes / GIB}
        (run_dir / "baseline_measured.json").write_text(json.dumps(measured, indent=2) + "\n")
    elif (run_dir / "baseline_measured.json").is_file():
        measured = json.loads((run_dir / "baseline_measured.json").read_text())
    summary = json.loads(summary_path.read_text())
    rounds = summary.get("rounds", [])
    sft = {
        **measured,
        "final": summary.get("final"),
        "kept_per_round": [r.get("kept") for r in rounds],
        "trained_per_round": [r.get("trained") for r in rounds],
        "steps_per_round": [r.get("steps") for r in rounds],
    }
    notes = [f"round {i}: {r['note']}" for i, r in enumerate(rounds) if r.get("note")]
    commands = [" ".join(["score-ray", *sft_argv])]
    if summary.get("final") is None:  # no round trained: the model is the base model
        label += ", no round trained (= base model)"
        evaluation = read_eval(demo / "eval_base")
    else:
        commands.append(" ".join(["score-ray", *eval_argv]))
        if rerun or not (eval_dir / "eval.json").is_file():
            code, _ = run_cli(eval_argv)
            if code:
                return None
        evaluation = read_eval(eval_dir)
    return {
        "label": label,
        "eval": evaluation,
        "sft": sft,
        "commands": commands,
        "rounds_notes": notes,
    }


def table_rows(results: dict[str, dict]) -> list[list[str]]:
    rows = []
    for name, result in results.items():
        report = result["eval"]
        cells = [with_ci(report[key], signed=key == "delta") for key in METRICS]
        paper = PAPER_MATH.get(name)
        rows.append([result["label"], *cells, f"{paper[0]:.1f} / {paper[1]:.1f}"])
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-demo", required=True, help="a finished `make demo` output dir")
    parser.add_argument("--only", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--output-dir", default="runs/baselines")
    parser.add_argument("--rerun", action="store_true", help="train and evaluate again")
    parser.add_argument("--json", default="benchmarks/results/baselines.json")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every SFT run")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
