"""`score-ray demo` (what `make demo` runs): evaluate, train, evaluate again, report.

    score-ray demo --config conf/demo.yaml --output-dir runs/demo [--sft-first] [key=value ...]

Four steps, each the ordinary command a user would type, run as a child process so that
each starts and stops its own Ray session and a failure names its step:

    0. score-ray sft   (with --sft-first) -> OUTPUT/sft/final/, the base of every later step
    1. score-ray eval  (base model)       -> OUTPUT/eval_base/eval.json
    2. score-ray train                    -> OUTPUT/train/ (metrics.jsonl, final/, ...)
    3. score-ray eval  (trained model)    -> OUTPUT/eval_trained/eval.json
    4. report                             -> OUTPUT/report.md, OUTPUT/*.png

The configs and overrides apply to every step. With `--sft-first` the base that SCoRe starts
from (and that step 1 evaluates) is the fine-tuned model of step 0, e.g. the gold-answer SFT
of conf/sft/gold.yaml: SCoRe needs a base whose sampled second attempts fix something
(docs/training_signal.md), and the SFT's targets are single answers, never corrections.

While the steps run, the memory of the whole process tree (driver, Ray's daemons, every
actor) is sampled; its peak and the wall time of each step go into the report and
`OUTPUT/demo.json`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from score_ray.report import write_report

GIB = 1024**3
DEFAULT_CONFIG = "conf/demo.yaml"


def add_parser(commands: Any) -> None:
    """Register `score-ray demo` on the CLI's subparsers."""
    parser = commands.add_parser(
        "demo", help="evaluate the base model, train with SCoRe, evaluate again, write a report"
    )
    parser.add_argument(
        "--config",
        action="append",
        help=f"YAML config for every step (repeatable; default {DEFAULT_CONFIG})",
    )
    parser.add_argument("--output-dir", default="runs/demo", help="folder for all outputs")
    parser.add_argument(
        "--sft-first",
        action="store_true",
        help="first fine-tune model.path with `score-ray sft` (same configs), then run every "
        "later step from its final/ model",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every step")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    configs = args.config or [DEFAULT_CONFIG]
    steps = demo_steps(config_args(configs) + args.overrides, out, args.sft_first)
    base_dir, trained_dir = out / "eval_base", out / "eval_trained"
    train_dir = out / "train"
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with MemoryPeak() as memory:
        for index, (name, argv) in enumerate(steps, 1):
            print(f"\n=== demo step {index}/{len(steps) + 1}: {name} ===", flush=True)
            code, timings[name] = run_cli(argv)
            if code != 0:
                print(f"demo step '{name}' failed with exit code {code}", file=sys.stderr)
                return code
    wall = time.perf_counter() - started
    print(f"\n=== demo step {len(steps) + 1}/{len(steps) + 1}: report ===", flush=True)
    facts = {
        "wall time": f"{wall / 60:.1f} min",
        **{f"  {name}": f"{seconds / 60:.1f} min" for name, seconds in timings.items()},
        "peak memory (PSS of the process tree)": f"{memory.peak_bytes / GIB:.2f} GiB",
    }
    table = write_report(out, base_dir, trained_dir, train_dir / "metrics.jsonl", facts)
    summary = {
        "wall_s": wall,
        "step_s": timings,
        "peak_memory_bytes": memory.peak_bytes,
        "peak_memory_gib": memory.peak_bytes / GIB,
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table)
    print(f"\nwall {wall / 60:.1f} min, peak memory {memory.peak_bytes / GIB:.2f} GiB")
    print(f"report: {out / 'report.md'}")
    return 0


def demo_steps(common: list[str], out: Path, sft_first: bool) -> list[tuple[str, list[str]]]:
    """(name, `score-ray` argv) of each step; `common` (configs and overrides) goes to all.
    With `sft_first`, an SFT step comes first and every later step starts from its model."""
    steps = []
    if sft_first:
        sft_dir = out / "sft"
        steps.append(("sft", ["sft", *common, f"output_dir={sft_dir}"]))
        common = [*common, f"model.path={sft_dir / 'final'}"]
    train_dir = out / "train"
    return [
        *steps,
        ("base eval", ["eval", *common, f"output_dir={out / 'eval_base'}"]),
        ("train", ["train", *common, f"output_dir={train_dir}"]),
        (
            "trained eval",
            ["eval", *common, f"model.path={train_dir}", f"output_dir={out / 'eval_trained'}"],
        ),
    ]


def run_cli(argv: list[str]) -> tuple[int, float]:
    """Run `score-ray ARGV` as a child process: (exit code, seconds). Its output goes
    straight to the terminal, so progress bars stay live."""
    started = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", "score_ray.cli", *argv])
    return code, time.perf_counter() - started


def config_args(configs: list[str]) -> list[str]:
    """`--config A --config B ...`"""
    return [arg for name in configs for arg in ("--config", name)]


class MemoryPeak:
    """Samples the summed PSS of this process and all its descendants in a thread.

    PSS (proportional set size) splits shared pages between the processes mapping them,
    so the sum is the physical memory the tree uses; summing RSS would count torch's
    shared libraries once per actor.
    """

    def __init__(self, interval_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_bytes = max(self.peak_bytes, tree_pss_bytes())


def tree_pss_bytes() -> int:
    """Summed PSS of this process and its descendants (processes that exit mid-read count 0)."""
    import psutil

    me = psutil.Process()
    total = 0
    for process in [me, *me.children(recursive=True)]:
        try:
            total += process.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return total
