"""Weight sync latency: learner -> rollout worker through `score_ray.sync.sync_weights`,
compared with the floor of copying the same bytes in memory inside one process.

    sync   = learner.send_weights (gather, cast to the rollout dtype, serialize, ray.put)
           + rollout.update_weights (fetch, vLLM reload_weights, prefix-cache reset)
    floor  = clone every tensor of the same state dict (same dtype) in this process

Both are timed in the same run, alternating, after one warm-up sync.

    .venv/bin/python benchmarks/weight_sync.py --model tiny-llama
    .venv/bin/python benchmarks/weight_sync.py --model smollm2-135m-instruct --syncs 5

Writes benchmarks/results/weight_sync-<model>.json.
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_common import MODELS, bench_config, init_ray, median, table, write_result

from score_ray.learner.group import LearnerGroup
from score_ray.models import resolve_model_path
from score_ray.rollout.group import RolloutGroup
from score_ray.sync import sync_weights


def state_dict_floor(model_path: str, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], int]:
    """The model's parameters in the rollout dtype, and their size in bytes."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    state = {name: p.detach().contiguous() for name, p in model.named_parameters()}
    return state, sum(t.numel() * t.element_size() for t in state.values())


def copy_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in state.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="tiny-llama")
    parser.add_argument("--syncs", type=int, default=5, help="timed syncs after one warm-up")
    args = parser.parse_args()

    cfg = bench_config(args.model)
    model_path = resolve_model_path(cfg.model)
    init_ray()
    learner = LearnerGroup(cfg, model_path)
    rollout = RolloutGroup(cfg, model_path)
    state, floor_bytes = state_dict_floor(model_path, getattr(torch, cfg.rollout.dtype))

    sync_s, send_s, floor_s, version = [], [], [], 0
    for index in range(args.syncs + 1):  # index 0 warms up both sides
        version += 1
        start = time.perf_counter()
        handle = sync_weights(learner, rollout, version)
        total = time.perf_counter() - start
        # The send half alone (its handle is dropped), to split the sync into its sides.
        start = time.perf_counter()
        learner.send_weights(version + 1)
        send = time.perf_counter() - start
        version += 1
        start = time.perf_counter()
        copy = copy_state(state)
        floor = time.perf_counter() - start
        del copy
        if index:
            sync_s.append(total)
            send_s.append(send)
            floor_s.append(floor)
    rollout.shutdown()
    learner.shutdown()

    sync, send, floor = median(sync_s), median(send_s), median(floor_s)
    result = {
        "syncs": args.syncs,
        "rollout_dtype": cfg.rollout.dtype,
        "parameter_bytes": floor_bytes,
        "wire_bytes": handle.num_bytes,
        "tensors": handle.num_tensors,
        "sync_s_median": sync,
        "send_s_median": send,
        "receive_s_median": sync - send,
        "floor_copy_s_median": floor,
        "ratio_to_floor": sync / floor,
        "sync_bytes_per_s": handle.num_bytes / sync,
        "floor_bytes_per_s": floor_bytes / floor,
        "sync_s": sync_s,
        "floor_copy_s": floor_s,
    }
    print(
        table(
            ["model", "MB", "sync s", "send s", "receive s", "floor s", "x floor", "MB/s sync"],
            [
                [
                    args.model,
                    handle.num_bytes / 1e6,
                    sync,
                    send,
                    sync - send,
                    floor,
                    sync / floor,
                    handle.num_bytes / sync / 1e6,
                ]
            ],
        )
    )
    print(f"wrote {write_result('weight_sync', args.model, result)}")


if __name__ == "__main__":
    main()
