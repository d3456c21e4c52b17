"""Markdown tables of the newest benchmark results (benchmarks/results/*.json), for
docs/performance.md.

    .venv/bin/python benchmarks/report.py
"""

from __future__ import annotations

import json
from typing import Any

from bench_common import MODELS, RESULTS

from score_ray.report import markdown_table


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def _label(model: str, data: dict[str, Any]) -> str:
    """The model with the rollout dtype (and the config, if not conf/tiny.yaml) of the run."""
    config = f", {data['config']}" if "config" in data and "tiny" not in data["config"] else ""
    return f"{model} (rollout {data.get('rollout_dtype', '?')}{config})"


def rollout_rows() -> list[list[str]]:
    rows = []
    for model in MODELS:
        for block in ("default", "32"):
            data = _load(f"rollout_overhead-{model}-block{block}.json")
            if data is None:
                continue
            for name, run in data["runs"].items():
                rows.append(
                    [
                        _label(model, data),
                        str(data["block_size"]),
                        name,
                        f"{run['tokens_per_s']:.0f}",
                        f"{run['ratio_to_raw']:.2f}",
                        f"{100 * run['a2_hit_rate']:.0f}%",
                    ]
                )
    return rows


def step_rows() -> list[list[str]]:
    rows = []
    names = {"stream": "score-ray, streamed verify", "batch": "score-ray, batch verify"}
    for label in (name for model in MODELS for name in (model, f"{model}-demo")):
        data = _load(f"step_throughput-{label}.json")
        if data is None:
            continue
        model = label.removesuffix("-demo")
        naive_generate = data["modes"]["naive"]["generate_s_mean"]
        for mode, s in data["modes"].items():
            rows.append(
                [
                    _label(model, data),
                    names.get(mode, "naive single process"),
                    f"{s['step_s_mean']:.1f}",
                    f"{s['traces_per_s']:.2f}",
                    f"{s['speedup_vs_naive']:.2f}",
                    f"{naive_generate / s['generate_s_mean']:.2f}",
                    *(f"{100 * s[f'{p}_share']:.1f}%" for p in ("generate", "verify", "learn")),
                    f"{100 * s['sync_share']:.1f}%",
                ]
            )
    return rows


def learner_rows() -> list[list[str]]:
    rows = []
    for model in MODELS:
        data = _load(f"learner_step-{model}.json")
        if data is None:
            continue
        for name, seconds in data["median_s"].items():
            rows.append(
                [
                    model,
                    name,
                    f"{seconds:.1f}",
                    f"{data['speedup_vs_naive'][name]:.2f}",
                    f"{data['over_floor_s'][name]:+.1f}",
                ]
            )
    return rows


def sync_rows() -> list[list[str]]:
    rows = []
    for model in MODELS:
        data = _load(f"weight_sync-{model}.json")
        if data is None:
            continue
        rows.append(
            [
                model,
                f"{data['wire_bytes'] / 1e6:.0f}",
                f"{data['sync_s_median']:.3f}",
                f"{data['send_s_median']:.3f}",
                f"{data['receive_s_median']:.3f}",
                f"{data['floor_copy_s_median']:.4f}",
                f"{data['ratio_to_floor']:.1f}",
                f"{data['sync_bytes_per_s'] / 1e6:.0f}",
            ]
        )
    return rows


def memory_rows() -> list[list[str]]:
    rows = []
    for model in MODELS:
        data = _load(f"memory-{model}.json")
        if data is None:
            continue
        for role, r in data["processes"].items():
            rows.append(
                [
                    model,
                    f"{role}",
                    f"{r['peak_sampled_mb']:.0f}",
                    f"{r['peak_ru_maxrss_mb']:.0f}",
                    f"{r['slope_mb_per_step_second_half']:+.2f}",
                ]
            )
        rows.append(
            [
                model,
                f"all ({data['steps']} steps)",
                "",
                "",
                f"{data['total_slope_mb_per_step_second_half']:+.2f}",
            ]
        )
    return rows


def main() -> None:
    print(
        markdown_table(
            ["model", "KV block", "run", "tokens/s", "x raw vLLM", "attempt-2 prefix hits"],
            rollout_rows(),
        )
    )
    print()
    print(
        markdown_table(
            [
                "model",
                "run",
                "step s",
                "traces/s",
                "x naive",
                "generation x naive",
                "generate",
                "verify",
                "learn",
                "sync",
            ],
            step_rows(),
        )
    )
    print()
    print(
        markdown_table(
            ["model", "learner update", "s", "x naive", "s over plain torch"], learner_rows()
        )
    )
    print()
    print(
        markdown_table(
            ["model", "MB", "sync s", "send s", "receive s", "floor s", "x floor", "MB/s"],
            sync_rows(),
        )
    )
    print()
    print(
        markdown_table(
            ["model", "process", "peak RSS MB", "ru_maxrss MB", "MB/step"], memory_rows()
        )
    )


if __name__ == "__main__":
    main()
