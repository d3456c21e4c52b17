"""Throughput of the code sandbox: how many small programs one core verifies per second.

Each program is a trivial function plus asserts, half of them passing and half failing, so the
numbers measure the sandbox's fixed cost per program (process start, namespaces, uid drop,
limits, interpreter start-up, verdict), not the programs. Four runs:

    sequential  run_untrusted     one caller, one program at a time
    sequential  score_completion  the same through the scorer (extraction, program assembly)
    pool        run_untrusted     a process pool of os.cpu_count() workers
    pool        score_completion

Per-core figures: sequential runs use one core at a time, so programs/s is per core; pool
runs divide by the number of workers. Because wall-clock numbers on a shared machine depend
on the other load, the table also gives CPU time per program (parent plus every child
process, from getrusage), whose inverse is what one dedicated core would sustain.

    nice -n 10 .venv/bin/python benchmarks/sandbox_throughput.py              # 200 programs
    nice -n 10 .venv/bin/python benchmarks/sandbox_throughput.py --n 400 --workers 2

Writes benchmarks/results/sandbox_throughput.json (or --out).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from score_ray.tasks.base import Problem
from score_ray.verify.sandbox import SandboxLimits, isolation, run_untrusted
from score_ray.verify.scorers import score_completion

RESULTS = Path(__file__).resolve().parent / "results" / "sandbox_throughput.json"
TARGET_PER_CORE = 50.0
TIMEOUT_S = 5.0

_SOLUTION = "def add(a, b):\n    return a + b\n"
_WRONG = "def add(a, b):\n    return a - b\n"
_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(0, 0) == 0"]
PROBLEM = Problem(
    uid="bench:add",
    question="Write a function add(a, b).",
    answer=_SOLUTION,
    meta={"source": "mbpp_jsonl", "tests": _TESTS, "setup": ""},
)


@dataclass
class Row:
    mode: str
    path: str
    workers: int
    programs: int
    passed: int
    expected_passed: int
    wall_s: float
    cpu_ms_per_program: float

    @property
    def per_second(self) -> float:
        return self.programs / self.wall_s

    @property
    def per_second_per_core(self) -> float:
        return self.per_second / self.workers

    @property
    def per_cpu_second(self) -> float:
        return 1000.0 / self.cpu_ms_per_program


def sandbox_job(index: int) -> bool:
    body = _SOLUTION if index % 2 == 0 else _WRONG
    program = body + "\n" + "\n".join(_TESTS) + "\n"
    return run_untrusted(program, TIMEOUT_S, SandboxLimits()).passed


def scorer_job(index: int) -> bool:
    body = _SOLUTION if index % 2 == 0 else _WRONG
    completion = f"Here you go:\n\n```python\n{body}```\n"
    return score_completion(PROBLEM, completion, "code", sandbox_timeout_s=TIMEOUT_S) == 1.0


def cpu_seconds() -> float:
    """CPU time of this process and of all its reaped children (sandboxes, pool workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _warm_up() -> None:
    isolation()  # the one-off probe, kept out of the timed part


def measure(job: Callable[[int], bool], path: str, n: int, workers: int) -> Row:
    cpu_before = cpu_seconds()
    if workers == 1:
        started = time.perf_counter()
        verdicts = [job(i) for i in range(n)]
        wall = time.perf_counter() - started
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_warm_up) as pool:
            list(pool.map(_warm_up_task, range(workers)))  # start every worker first
            started = time.perf_counter()
            verdicts = list(pool.map(job, range(n), chunksize=4))
            wall = time.perf_counter() - started
    # Pool workers are reaped at shutdown, so their CPU (and their sandboxes') counts here;
    # it includes their start-up, which makes the pool's CPU figure slightly pessimistic.
    cpu = cpu_seconds() - cpu_before
    mode = "sequential" if workers == 1 else "pool"
    return Row(mode, path, workers, n, sum(verdicts), (n + 1) // 2, wall, cpu / n * 1000)


def _warm_up_task(_: int) -> None:
    time.sleep(0.05)


def table(rows: list[Row]) -> str:
    lines = [
        "| mode | path | workers | programs | correct verdicts | wall s | programs/s "
        "| programs/s/core | CPU ms/program | programs per CPU-s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ok = "yes" if row.passed == row.expected_passed else f"NO ({row.passed})"
        lines.append(
            f"| {row.mode} | {row.path} | {row.workers} | {row.programs} | {ok} "
            f"| {row.wall_s:.2f} | {row.per_second:.1f} | {row.per_second_per_core:.1f} "
            f"| {row.cpu_ms_per_program:.1f} | {row.per_cpu_second:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="programs per run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    _warm_up()
    load_before = os.getloadavg()
    rows = [
        measure(sandbox_job, "run_untrusted", args.n, 1),
        measure(scorer_job, "score_completion", args.n, 1),
        measure(sandbox_job, "run_untrusted", args.n, args.workers),
        measure(scorer_job, "score_completion", args.n, args.workers),
    ]
    load_after = os.getloadavg()
    iso = isolation()
    print(table(rows))
    best = max(row.per_second_per_core for row in rows if row.mode == "sequential")
    print(
        f"\nisolation {iso.name}, interpreter {iso.python}; target {TARGET_PER_CORE:.0f} "
        f"programs/s/core: best sequential {best:.1f} (wall), "
        f"{rows[0].per_cpu_second:.1f} per CPU-second; load average {load_before[0]:.1f} "
        f"before, {load_after[0]:.1f} after"
    )
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
        "isolation": iso.name,
        "sandbox_python": iso.python,
        "target_programs_per_s_per_core": TARGET_PER_CORE,
        "rows": [
            {
                **asdict(row),
                "programs_per_s": row.per_second,
                "programs_per_s_per_core": row.per_second_per_core,
                "programs_per_cpu_s": row.per_cpu_second,
            }
            for row in rows
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
