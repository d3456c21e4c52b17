"""SFT on Ray Train: a `TorchTrainer` (Train V2) whose workers run plain torch DDP.

Each worker loads the HF model, wraps it in DDP (`ray.train.torch.prepare_model`: gloo on
CPU, NCCL on GPU) and walks the same seeded `batch_plan`; of each global batch it computes
its round-robin share in micro-batches. The loss is the summed negative log-likelihood of
the target tokens (examples.target_nll_sum) divided by the global batch's target-token
count, times the world size because DDP averages gradients: every target token weighs the
same however the batch is split.

A checkpoint is the HF folder itself (weights, config, tokenizer) plus `sft_state.pt`
(optimizer, step, losses), reported through `ray.train.report(..., checkpoint=...)` every
`sft.checkpoint_every` steps and after the last. Ray Train keeps them under
`RunConfig(storage_path, name)`; a new `TorchTrainer` with the same storage path and name
restores the newest one (its snapshot lives there), so re-running a killed SFT command goes
on from its last checkpoint. The last checkpoint is the trained model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from score_ray.models import add_legacy_rope_theta
from score_ray.sft.examples import (
    SftExample,
    batch_plan,
    collate_examples,
    micro_batches,
    target_nll_sum,
    target_tokens,
    worker_share,
)

STATE_FILE = "sft_state.pt"
"""Inside a checkpoint: optimizer state, step, losses (everything else is the HF folder)."""


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: DDP SFT over `config["examples"]` (see the module docstring)."""
    import ray.train
    import ray.train.torch
    import torch

    torch.set_num_threads(config["threads"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    examples = [SftExample.from_json(row) for row in config["examples"]]
    plan = batch_plan(len(examples), config["batch_size"], config["epochs"], config["seed"])

    checkpoint = ray.train.get_checkpoint()
    state: dict[str, Any] = {"step": 0, "losses": []}
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            model = _load_model(folder)
            state = torch.load(Path(folder) / STATE_FILE, weights_only=False)
        state.setdefault("resumed_at", []).append(state["step"])
    else:
        model = _load_model(config["model_path"])
    model = ray.train.torch.prepare_model(model)  # DDP; moves the model to the worker's device
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"]
    )
    if "optimizer" in state:
        optimizer.load_state_dict(state.pop("optimizer"))
    device = ray.train.torch.get_device()

    for step in range(state["step"], len(plan)):
        loss = _train_step(model, optimizer, examples, plan[step], rank, world, config, device)
        state["step"] = step + 1
        state["losses"].append(loss)
        due = state["step"] % config["checkpoint_every"] == 0 or state["step"] == len(plan)
        metrics = {"step": state["step"], "steps": len(plan), "loss": loss}
        if not due:
            ray.train.report(metrics)
            continue
        _report_checkpoint(model, optimizer, state, metrics, rank, config)
        # Test hook: a worker dies after this checkpoint, once (a resumed run goes on).
        if config.get("fail_after_step") == state["step"] and checkpoint is None:
            # The controller registers a checkpoint only when it polls the report off each
            # worker's one-slot result queue; a worker that dies first can take it along
            # (the resumed run then restarts at step 0). One more report, behind Ray
            # Train's barrier across ranks, blocks until every rank's checkpoint report was
            # taken: the death comes after the checkpoint counts, as the test intends.
            ray.train.report(metrics)
            raise RuntimeError(f"injected failure after step {state['step']}")


def _train_step(
    model: Any,
    optimizer: Any,
    examples: list[SftExample],
    batch: list[int],
    rank: int,
    world: int,
    config: dict[str, Any],
    device: Any,
) -> float:
    """One optimizer step on global batch `batch`; returns its mean target-token NLL."""
    import torch
    import torch.distributed as dist

    model.train()
    optimizer.zero_grad(set_to_none=True)
    tokens = max(1, target_tokens(examples, batch))  # the same number on every worker
    share = worker_share(batch, rank, world)
    # A worker with no example of a short last batch still runs a forward and backward (on
    # a zero-weighted example): DDP's all-reduce needs every rank.
    weight = 1.0 if share else 0.0
    parts = micro_batches(share or batch[:1], config["micro_batch_size"])
    total = torch.zeros((), device=device)
    for index, part in enumerate(parts):
        sft_batch = collate_examples([examples[i] for i in part], config["pad_id"])
        logits = model(
            input_ids=sft_batch.input_ids.to(device),
            attention_mask=sft_batch.attention_mask.to(device),
        ).logits
        sft_batch.input_ids = sft_batch.input_ids.to(device)
        sft_batch.loss_mask = sft_batch.loss_mask.to(device)
        nll = target_nll_sum(logits, sft_batch) * weight
        total += nll.detach()
        # DDP averages gradients over workers; scale back to a sum over the global batch.
        scaled = nll * world / tokens
        last = index == len(parts) - 1
        # All-reduce once per step, on the last micro-batch (one worker: no DDP wrapper).
        quiet = model.no_sync() if hasattr(model, "no_sync") and not last else nullcontext()
        with quiet:
            scaled.backward()
    if config["grad_clip"] > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip"])
    optimizer.step()
    if dist.is_initialized():
        dist.all_reduce(total)
    return float(total.item()) / tokens


def _report_checkpoint(
    model: Any,
    optimizer: Any,
    state: dict[str, Any],
    metrics: dict[str, Any],
    rank: int,
    config: dict[str, Any],
) -> None:
    """Rank 0 writes the HF folder + sft_state.pt; every rank reports (a barrier)."""
    import ray.train
    import torch

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        save_hf_folder(model.module if hasattr(model, "module") else model, folder, config)
        torch.save({**state, "optimizer": optimizer.state_dict()}, Path(folder) / STATE_FILE)
        checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


def _load_model(path: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def save_hf_folder(model: Any, folder: str, config: dict[str, Any]) -> None:
    """Weights, config, tokenizer and generation config: what transformers and vLLM load."""
    from transformers import AutoTokenizer

    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(config["model_path"]).save_pretrained(folder)
    source = Path(config["model_path"]) / "generation_config.json"
    if source.is_file():  # the base's own (vLLM reads sampling defaults from it)
        shutil.copy(source, Path(folder) / "generation_config.json")
    add_legacy_rope_theta(Path(folder))


def fit(
    examples: list[SftExample],
    model_path: str,
    pad_id: int,
    sft: Any,
    storage_path: str,
    name: str,
    fail_after_step: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """Train on `examples` with a TorchTrainer; returns the final checkpoint's folder (an HF
    model folder plus sft_state.pt, under `storage_path/name`) and the last metrics.

    Re-running with the same `storage_path` and `name` resumes from the newest checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    threads = max(1, (os.cpu_count() or 1) // sft.num_workers) if not sft.use_gpu else 1
    loop_config = {
        "examples": [e.to_json() for e in examples],
        "model_path": model_path,
        "pad_id": pad_id,
        "lr": sft.lr,
        "weight_decay": sft.weight_decay,
        "grad_clip": sft.grad_clip,
        "epochs": sft.epochs,
        "batch_size": sft.batch_size,
        "micro_batch_size": sft.micro_batch_size,
        "checkpoint_every": sft.checkpoint_every,
        "seed": sft.seed,
        "threads": threads,
        "fail_after_step": fail_after_step,
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=sft.num_workers,
            use_gpu=sft.use_gpu,
            resources_per_worker={"CPU": sft.num_cpus, **({"GPU": 1} if sft.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(Path(storage_path).resolve()),
            failure_config=FailureConfig(max_failures=sft.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"SFT run {name} ended without a checkpoint")
    return result.checkpoint.path, dict(result.metrics or {})
