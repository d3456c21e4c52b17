"""Memory: peak resident memory of each actor, and whether it grows from step to step.

Runs the real Trainer for `--steps` steps (Stage I for the first half, Stage II after) with a
small batch and samples, after every step, the resident set (RSS) of each process: the
rollout worker (vLLM engine), the verifiers, the learner (DeepSpeed), each with its child
processes (e.g. code sandboxes), and the driver alone (its children are the Ray cluster).
Per process it reports the peak sampled RSS, the kernel's peak (`ru_maxrss`, read inside
the process at the end), and the slope of RSS over steps by least squares over the second
half of the run (the first steps include allocator and cache warm-up). Memory must not
grow: the slope should be ~0 MB/step.

    .venv/bin/python benchmarks/memory.py --model smollm2-135m-instruct --steps 50
    .venv/bin/python benchmarks/memory.py --model tiny-llama --steps 10

Every step it also records each learner rank's `Learner.memory_report`: where the reference
model lives and the bytes of it the rank holds, and on a GPU the CUDA allocator's allocated,
reserved and peak bytes. That is the hook for the GPU memory of the reference's placement
(issue 16 item 6e), which no GPU here has measured, e.g. on a 2-GPU node:

    .venv/bin/python benchmarks/memory.py --model smollm2-135m-instruct --steps 6 \
        --set rollout.num_gpus=0.5 --set learner.num_gpus=0.5 \
        --set rollout.colocate_with_learner=true --set learner.zero_stage=3 \
        --set rollout.num_workers=2 --set learner.world_size=2

Writes benchmarks/results/memory-<model>.json (with --set: memory-overrides-<model>.json).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
from pathlib import Path
from typing import Any

import psutil
import ray
from bench_common import MODELS, ROOT, bench_config, init_ray, table, write_result

from score_ray.launch import prepare_inputs
from score_ray.trainer import Trainer

MB = 1024 * 1024


def rss_with_children(pid: int) -> int:
    """Resident bytes of a process and all its descendants (0 if it is gone)."""
    try:
        process = psutil.Process(pid)
        family = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += member.memory_info().rss
    return total


def actor_processes(trainer: Trainer) -> dict[str, Any]:
    """Role name -> actor handle (None: the driver, this process)."""
    actors = trainer.actors
    roles: dict[str, Any] = {"driver": None}
    roles.update({f"rollout{i}": w for i, w in enumerate(actors.rollout.workers)})
    roles.update({f"verifier{i}": v for i, v in enumerate(actors.verifiers.actors)})
    roles.update({f"learner{i}": r for i, r in enumerate(actors.learner.ranks)})
    return roles


def _in_actor(actor: Any, fn: Any) -> Any:
    return fn(None) if actor is None else ray.get(actor.__ray_call__.remote(fn))


def _pid(_self: Any) -> int:
    return os.getpid()


def _peak_kb(_self: Any) -> int:
    """Peak RSS of this process (ru_maxrss, KiB on Linux); for an actor, plus the largest
    reaped child (sandboxes). The driver's children are the Ray cluster: not counted."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return own + (0 if _self is None else resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def slope(values: list[float]) -> float:
    """Least-squares slope of values against their index."""
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    num = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values))
    den = sum((x - mean_x) ** 2 for x in range(n))
    return num / den if den else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--prompts", type=int, default=1)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "bench_memory")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    args = parser.parse_args()

    half = args.steps // 2
    cfg = bench_config(
        args.model,
        f"train.prompts_per_step={args.prompts}",
        f"train.samples_per_prompt={args.samples}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        "model.max_model_len=1024",
        f"train.stage1_steps={half}",
        f"train.stage2_steps={args.steps - half}",
        "train.checkpoint_every=0",
        f"output_dir={args.out_dir}",
        *args.set,
    )
    shutil.rmtree(args.out_dir, ignore_errors=True)
    model_path, train, held_out = prepare_inputs(cfg)
    init_ray()
    trainer = Trainer(cfg, model_path, train, held_out)
    roles = actor_processes(trainer)
    pids = {role: _in_actor(actor, _pid) for role, actor in roles.items()}
    samples: dict[str, list[float]] = {role: [] for role in roles}
    learner_memory = [trainer.actors.learner.memory_report()]  # after set-up, then per step
    for step in range(args.steps):
        trainer.step(trainer.schedule[step])
        learner_memory.append(trainer.actors.learner.memory_report())
        for role, pid in pids.items():
            # The driver's children are the local Ray cluster (raylet, GCS, every actor):
            # count the driver process alone.
            rss = psutil.Process(pid).memory_info().rss if role == "driver" else None
            samples[role].append((rss or rss_with_children(pid)) / MB)
        if step % 10 == 9:
            print(
                f"step {step + 1}: " + ", ".join(f"{r} {v[-1]:.0f} MB" for r, v in samples.items())
            )
    peaks = {role: _in_actor(actor, _peak_kb) / 1024 for role, actor in roles.items()}
    restarts = trainer.actors.rollout.restarts + trainer.actors.verifiers.restarts
    trainer.actors.shutdown()

    per_role = {
        role: {
            "pid": pids[role],
            "peak_sampled_mb": max(values),
            "peak_ru_maxrss_mb": peaks[role],
            "first_mb": values[0],
            "last_mb": values[-1],
            "slope_mb_per_step_second_half": slope(values[len(values) // 2 :]),
            "rss_mb_per_step": values,
        }
        for role, values in samples.items()
    }
    total = [sum(values[i] for values in samples.values()) for i in range(args.steps)]
    data = {
        "steps": args.steps,
        "traces_per_step": cfg.train.traces_per_step,
        "max_new_tokens": args.max_new_tokens,
        "actor_restarts": restarts,
        "processes": per_role,
        "total_slope_mb_per_step_second_half": slope(total[len(total) // 2 :]),
        "total_rss_mb_per_step": total,
        "overrides": args.set,
        "learner_memory_per_step": learner_memory,
    }
    rows = [
        [
            role,
            r["peak_sampled_mb"],
            r["peak_ru_maxrss_mb"],
            r["first_mb"],
            r["last_mb"],
            r["slope_mb_per_step_second_half"],
        ]
        for role, r in per_role.items()
    ]
    rows.append(
        ["total", max(total), "", total[0], total[-1], data["total_slope_mb_per_step_second_half"]]
    )
    header = ["process", "peak MB", "ru_maxrss MB", "step 1 MB", "last MB", "MB/step (2nd half)"]
    print(table(header, rows))
    for rank, report in enumerate(learner_memory[-1]):
        print(f"learner rank {rank}: " + ", ".join(f"{k} {v}" for k, v in report.items()))
    name = "memory-overrides" if args.set else "memory"  # keep the default run's file
    print(f"wrote {write_result(name, args.model, data)}")


if __name__ == "__main__":
    main()
