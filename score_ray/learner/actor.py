"""Learner: one DeepSpeed rank holding the policy, its optimizer and a frozen reference.

API (called on every rank of the group at once; see `LearnerGroup`):
    setup()                             -> None   join the process group, build engine
    train_step(shard, stage)            -> dict   one policy update on this rank's shard
    sequence_logprobs(token_id_lists)   -> list   current-policy log-probs
    save_checkpoint(dir) / load_checkpoint(dir)   DeepSpeed state of every rank (dir: a path
                                                  or a URI, staged through this node's disk)
    send_weights(version)               -> WeightHandle | None  (rank 0 returns it)
    describe_weights(version)           -> WeightHandle   rank 0: names/shapes/dtypes (nccl)
    init_weight_transport(info) / release_weights()       transport set-up and clean-up
    save_pretrained(path)               -> None   HF folder that transformers and vLLM load
                                                  (with LoRA: the adapter merged in)
    save_adapter(path)                  -> None   LoRA only: the peft adapter alone
    memory_report()                     -> dict   where the reference lives, its bytes on this
                                                  rank, CUDA allocator figures (GPU)

With `learner.lora.rank` > 0 the policy is a peft LoRA model: only the adapter trains, the
reference is the same module with the adapter disabled, and weights leave the learner
merged, under the base model's names (`score_ray.learner.lora`).

The frozen reference model follows the policy's memory plan (`reference_placement`):
under ZeRO-3 it is a DeepSpeed ZeRO-3 engine of its own (no optimizer), so each rank holds
1/world_size of it and gathers one layer at a time in its forward, as for the policy; colocated
with vLLM on a GPU it must not sit there while vLLM serves, so ZeRO-3 keeps its shards in CPU
memory (DeepSpeed parameter offload, fetched layer by layer in each forward), and ZeRO 0-2,
whose policy is whole on every rank anyway, moves the whole copy to the GPU for the step
and back to the CPU after it. Otherwise a whole copy stays on the learner's device.

The loss itself is `score_ray.algo.score_loss`; this file only feeds it tensors.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from score_ray.algo import (
    TraceBatch,
    attempt_kl_coefficients,
    sampling_temperatures,
    score_loss,
    token_logprobs,
    truncated_importance_weights,
)
from score_ray.algo.micro_batches import fixed_micro_batches
from score_ray.checkpoint import staged_read, staged_write
from score_ray.config import Config
from score_ray.learner.lora import (
    ADAPTER_TRANSPORT,
    adapter_files,
    base_parameter_shapes,
    merged_named_parameters,
    trainable_parameters,
    trainable_state_dict,
    wrap_with_lora,
)
from score_ray.placement import pin_threads, thread_report, torch_threads
from score_ray.transport import (
    MIB,
    ParamSpec,
    WeightHandle,
    check_specs,
    choose_transport,
    make_transport,
    spec_bytes,
    update_info,
    vllm_weight_name,
)

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LearnerShard:
    """One rank's slice of a training batch."""

    batch: TraceBatch
    advantage1: torch.Tensor  # [B] per-trace advantage of attempt 1
    advantage2: torch.Tensor  # [B] per-trace advantage of attempt 2
    attempt1_weight: torch.Tensor  # [B] weight of attempt 1's loss terms (score_loss)
    micro_batches: list[list[int]] | None = None
    """Row indices of each micro-batch (`score_ray.algo.micro_batches`); None: contiguous runs
    of learner.micro_batch_size."""


REFERENCE_SHARDED = "sharded"
"""ZeRO-3: a DeepSpeed ZeRO-3 engine, 1/world_size per rank (CPU-offloaded when colocated)."""
REFERENCE_OFFLOADED = "offloaded"
"""ZeRO 0-2 colocated on a GPU: whole, on the GPU only during train_step."""
REFERENCE_RESIDENT = "resident"
"""Otherwise: whole, on the learner's device."""
REFERENCE_ADAPTER_DISABLED = "adapter_disabled"
"""LoRA: no copy, the policy itself with its adapter disabled."""


def reference_placement(cfg: Config, on_gpu: bool) -> str:
    """Where the frozen reference model lives (see the module docstring)."""
    if cfg.learner.lora.rank > 0:
        return REFERENCE_ADAPTER_DISABLED
    if cfg.learner.zero_stage == 3:
        return REFERENCE_SHARDED
    if on_gpu and cfg.rollout.colocate_with_learner:
        return REFERENCE_OFFLOADED
    return REFERENCE_RESIDENT


def reference_deepspeed_config(cfg: Config, on_gpu: bool) -> dict[str, Any]:
    """The reference's ZeRO-3 engine: the policy's batch and precision settings, stage 3, and
    colocated on a GPU its parameters offloaded to (pinned) CPU memory between uses."""
    config = deepspeed_config(cfg, on_gpu)
    zero: dict[str, Any] = {"stage": 3}
    if on_gpu and cfg.rollout.colocate_with_learner:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config["zero_optimization"] = zero
    return config


def deepspeed_config(cfg: Config, on_gpu: bool) -> dict[str, Any]:
    learner = cfg.learner
    local_batch = cfg.traces_per_step // learner.world_size
    zero: dict[str, Any] = {"stage": learner.zero_stage}
    if not on_gpu:
        # gloo has no reduce_scatter; all-reduce gives the same averaged gradient.
        zero["reduce_scatter"] = False
    return {
        "train_micro_batch_size_per_gpu": learner.micro_batch_size,
        "gradient_accumulation_steps": local_batch // learner.micro_batch_size,
        "gradient_clipping": learner.grad_clip,
        "zero_optimization": zero,
        # Low-precision weights train only in DeepSpeed's mixed-precision modes, which keep
        # fp32 master weights and optimizer state (config validation rejects them on CPU).
        "bf16": {"enabled": on_gpu and cfg.model.dtype == "bfloat16"},
        "fp16": {"enabled": on_gpu and cfg.model.dtype == "float16", "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class Learner:
    def __init__(self, cfg: Config, model_path: str, rank: int) -> None:
        self.cfg = cfg
        self.model_path = model_path
        self.rank = rank
        self.on_gpu = torch.cuda.is_available() and cfg.learner.num_gpus > 0
        if not self.on_gpu:
            os.environ["DS_ACCELERATOR"] = "cpu"
        self.engine: Any = None
        self.reference: Any = None  # None with LoRA: the policy with its adapter disabled
        self.lora = cfg.learner.lora.rank > 0

    def setup(self, master_addr: str, master_port: int) -> None:
        """Join the process group and build the DeepSpeed engine (collective: all ranks)."""
        os.environ.update(
            {
                "RANK": str(self.rank),
                "WORLD_SIZE": str(self.cfg.learner.world_size),
                "LOCAL_RANK": "0",  # Ray gives each actor its own device view
                "MASTER_ADDR": master_addr,
                "MASTER_PORT": str(master_port),
            }
        )
        import deepspeed
        from transformers import AutoModelForCausalLM

        learner = self.cfg.learner
        pin_threads(learner.cpu_cores, "learner.cpu_cores")  # before the engine's threads exist
        torch.set_num_threads(torch_threads(learner.threads, learner.world_size, learner.cpu_cores))
        deepspeed.init_distributed(dist_backend="nccl" if self.on_gpu else "gloo")
        torch.manual_seed(self.cfg.train.seed)
        dtype = _TORCH_DTYPES[self.cfg.model.dtype]
        policy = AutoModelForCausalLM.from_pretrained(self.model_path, torch_dtype=dtype)
        if self.cfg.learner.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        if self.lora:
            policy = wrap_with_lora(policy, self.cfg.learner.lora)
            if self.cfg.learner.gradient_checkpointing:
                # Frozen embeddings give checkpointed blocks inputs without grad, and
                # reentrant checkpointing would then drop the adapters' gradients.
                policy.enable_input_require_grads()
        optimizer = torch.optim.AdamW(
            trainable_parameters(policy),  # with LoRA: the adapter only
            lr=self.cfg.learner.lr,
            betas=(self.cfg.learner.adam_beta1, self.cfg.learner.adam_beta2),
            weight_decay=self.cfg.learner.weight_decay,
        )
        self.engine, *_ = deepspeed.initialize(
            model=policy,
            optimizer=optimizer,
            config=deepspeed_config(self.cfg, self.on_gpu),
        )
        self.reference_placement = reference_placement(self.cfg, self.on_gpu)
        if self.lora:
            # DeepSpeed's exclude_frozen_parameters drops the frozen tensors it finds in
            # named_parameters(), which lists a tied weight once: the tied lm_head (the
            # embedding's size, 113 MB on SmolLM2) stayed in every checkpoint. Save exactly
            # the adapter instead.
            module = self.engine.module
            self.engine.module_state_dict = lambda *_, **__: trainable_state_dict(module)
        else:  # LoRA's reference is the policy with its adapter disabled
            reference = AutoModelForCausalLM.from_pretrained(self.model_path, torch_dtype=dtype)
            self.reference = self._build_reference(reference.eval().requires_grad_(False))
        self.transport = make_transport(choose_transport(self.cfg), self.cfg.sync.bucket_mb * MIB)

    def _build_reference(self, model: Any) -> Any:
        """The frozen reference, placed as `reference_placement` says (collective under ZeRO-3:
        every rank builds its engine at once)."""
        if self.reference_placement == REFERENCE_SHARDED:
            import deepspeed

            config = reference_deepspeed_config(self.cfg, self.on_gpu)
            engine, *_ = deepspeed.initialize(model=model, config=config)
            engine.eval()  # DeepSpeedEngine.eval returns None, not the engine
            return engine
        device = "cpu" if self.reference_placement == REFERENCE_OFFLOADED else self.engine.device
        return model.to(device)

    def _reference_to(self, device: Any) -> None:
        """Offloaded reference: move it (to the GPU for a step, to the CPU after one)."""
        if self.reference_placement == REFERENCE_OFFLOADED and self.reference is not None:
            self.reference.to(device)

    def memory_report(self) -> dict[str, Any]:
        """Where the reference lives and the bytes of it this rank holds, plus the CUDA
        allocator's figures on a GPU (benchmarks/gpu_memory.py prints them per phase)."""
        report: dict[str, Any] = {
            "reference_placement": self.reference_placement,
            "reference_bytes": reference_bytes(self.reference),
        }
        if self.on_gpu:
            report |= {
                "cuda_allocated": torch.cuda.memory_allocated(),
                "cuda_reserved": torch.cuda.memory_reserved(),
                "cuda_max_allocated": torch.cuda.max_memory_allocated(),
            }
        return report

    def thread_report(self) -> dict[str, Any]:
        """This rank's cores and torch threads (`score_ray.placement.thread_report`)."""
        return thread_report()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def master_address(self) -> tuple[str, int]:
        """Rank 0 only: an address and free port for the process group."""
        import socket

        import ray

        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def _temperatures(self, batch: TraceBatch) -> torch.Tensor:
        """[B, T] the temperature each attempt token was sampled at (rollout config)."""
        return sampling_temperatures(
            batch.attempt1_mask,
            batch.attempt2_mask,
            self.cfg.rollout.temperature,
            self.cfg.attempt2_temperature,
        )

    def train_step(self, shard: LearnerShard, stage: int) -> dict[str, float]:
        """One optimizer step (`_train_step`), then hand the GPU memory it no longer needs
        back to the driver (`free_gpu_cache`): a colocated vLLM wakes up next."""
        self._reference_to(self.engine.device)
        try:
            return self._train_step(shard, stage)
        finally:
            self._reference_to("cpu")
            self.free_gpu_cache()

    def free_gpu_cache(self) -> None:
        """Return PyTorch's cached, unused GPU blocks to the driver.

        The caching allocator keeps the step's peak (activations, logits, gathered ZeRO-3
        parameters) reserved after the tensors are gone. No other process can use that
        memory, and a colocated vLLM's wake-up maps its whole budget back into it, so
        without this a wake-up can run out of memory that the learner is not using."""
        if self.on_gpu:
            torch.cuda.empty_cache()

    def _train_step(self, shard: LearnerShard, stage: int) -> dict[str, float]:
        """Micro-batches with gradient accumulation, then the optimizer step.

        Each micro-batch's loss (a mean over its rows) is weighted by rows / (rows on this
        rank) and the accumulation boundary is set by hand on the last one, so every trace
        weighs the same in the gradient whether micro-batches hold a fixed count or a token
        budget of traces (DeepSpeed's own 1 / gradient_accumulation_steps scaling assumes
        equal micro-batches, and its boundary a fixed count). With equal micro-batches this
        is exactly DeepSpeed's averaging. Data-parallel ranks then average as before."""
        cfg = self.cfg
        kl_coef1, kl_coef2 = attempt_kl_coefficients(
            stage, cfg.algo.beta1, cfg.algo.beta2, cfg.algo.single_turn
        )
        rows_on_rank = len(shard.batch)
        micro_batches = shard.micro_batches or fixed_micro_batches(
            rows_on_rank, cfg.learner.micro_batch_size
        )
        # One-step-off rollout: the behaviour policy is an older one (train.max_staleness).
        importance = cfg.train.max_staleness > 0
        totals = dict.fromkeys(
            ("loss", "pg_loss", "kl_loss", "kl1_sum", "kl1_tokens", "kl2_sum", "kl2_tokens"), 0.0
        )
        is_sum = is_tokens = is_capped = 0.0
        # Checkpointed layers recompute their forward in backward, which would append the
        # rows' keys to the shared prefix cache a second time.
        share = cfg.learner.share_prompt_prefix and not cfg.learner.gradient_checkpointing
        device = self.engine.device
        self.engine.train()
        for number, rows in enumerate(micro_batches):
            self.engine.set_gradient_accumulation_boundary(number == len(micro_batches) - 1)
            piece = _to_device(_trim_padding(shard.batch.select(rows)), device)
            temperatures = self._temperatures(piece)
            logprobs = self._logprobs(self.engine, piece, share, temperatures)
            ref_logprobs = self._reference_logprobs(piece, share, temperatures)
            token_weights = None
            if importance:
                token_weights = truncated_importance_weights(
                    logprobs, piece.behaviour_logprobs, cfg.algo.is_ratio_cap
                )
                generated = piece.attempt1_mask + piece.attempt2_mask
                is_sum += (token_weights * generated).sum().item()
                # min(ratio, C) reaches C only where the ratio did: no second copy of it here
                capped = (token_weights >= cfg.algo.is_ratio_cap).float()
                is_capped += (capped * generated).sum().item()
                is_tokens += generated.sum().item()
            index = torch.tensor(rows, dtype=torch.long)
            terms = score_loss(
                logprobs,
                ref_logprobs,
                piece.attempt1_mask,
                piece.attempt2_mask,
                shard.advantage1[index].to(device),
                shard.advantage2[index].to(device),
                kl_coef1,
                kl_coef2,
                token_normalizer=float(cfg.rollout.max_new_tokens),
                kl_estimator=cfg.algo.kl_estimator,
                attempt1_weight=shard.attempt1_weight[index].to(device),
                token_weights=token_weights,
            )
            share_of_rank = len(rows) / rows_on_rank
            self.engine.backward(terms.loss * share_of_rank, scale_wrt_gas=False)
            self.engine.step()
            totals["loss"] += terms.loss.item() * share_of_rank
            totals["pg_loss"] += terms.pg_loss * share_of_rank
            totals["kl_loss"] += terms.kl_loss * share_of_rank
            for key in ("kl1_sum", "kl1_tokens", "kl2_sum", "kl2_tokens"):
                totals[key] += getattr(terms, key)
        grad_norm = self.engine.get_global_grad_norm()
        totals["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        totals["micro_batches"] = float(len(micro_batches))
        if importance:
            totals["is_weight_sum"] = is_sum
            totals["is_capped"] = is_capped
            totals["is_tokens"] = is_tokens
        return totals

    @torch.no_grad()
    def _reference_logprobs(
        self, batch: TraceBatch, share_prefix: bool, temperature: float | torch.Tensor
    ) -> torch.Tensor:
        """[B, T] the frozen reference's log-probs (as `_logprobs`). With LoRA: the policy
        module itself with the adapter switched off, i.e. exactly the base weights. The
        module is called directly, not through the engine, so no DeepSpeed hook sees a
        second forward before the backward."""
        if not self.lora:
            return self._logprobs(self.reference, batch, share_prefix, temperature)
        module = self.engine.module
        with module.disable_adapter():
            return self._logprobs(module, batch, share_prefix, temperature)

    @staticmethod
    def _logprobs(
        model: Any,
        batch: TraceBatch,
        share_prefix: bool = True,
        temperature: float | torch.Tensor = 1.0,  # scalar or [B, T] (token_logprobs)
    ) -> torch.Tensor:
        """[B, T] log-probs at the sampling temperature, exact on every attempt token (0 on the
        shared prompt).

        Logits are computed only from the position before the first attempt token on
        (`logits_to_keep`): the prompt's tokens carry no loss, and skipping their [T, V]
        logits saves the LM head's share of the step.

        With `share_prefix`, the leading tokens that every row has in common (system prompt,
        few-shot examples: 135 of the demo's ~260 tokens per trace) go through the model once,
        as a batch of one, and the rows continue from that KV cache. Gradients flow back
        through the cache, so values and gradients are those of the full batch.
        """
        ids = batch.input_ids
        generated = (batch.attempt1_mask + batch.attempt2_mask).amax(0).nonzero()
        start = max(int(generated[0]) - 1, 0) if len(generated) else 0
        prefix = min(shared_prefix_length(ids, batch.attention_mask), start) if share_prefix else 0
        if ids.shape[0] == 1 or prefix < MIN_SHARED_PREFIX:
            prefix = 0
        keep = torch.arange(start - prefix, ids.shape[1] - prefix, device=ids.device)
        cache = None
        if prefix:
            # logits_to_keep=1: the prefix's logits are never used (0 would mean all of them).
            cache = model(input_ids=ids[:1, :prefix], use_cache=True, logits_to_keep=1)
            cache = cache.past_key_values
            cache.batch_repeat_interleave(ids.shape[0])
        logits = model(
            input_ids=ids[:, prefix:],
            attention_mask=batch.attention_mask,
            past_key_values=cache,
            logits_to_keep=keep,
        ).logits
        return token_logprobs(logits, ids, start, temperature)

    @torch.no_grad()
    def attempt_logprobs(self, batch: TraceBatch) -> list[tuple[list[float], list[float]]]:
        """Per trace, the current policy's log-probs of attempt 1's and attempt 2's tokens at
        their sampling temperatures, computed as `train_step` computes them (what the rollout's
        sampling log-probs must match after a sync)."""
        self.engine.eval()
        share = self.cfg.learner.share_prompt_prefix
        batch = _to_device(_trim_padding(batch), self.engine.device)
        logprobs = self._logprobs(self.engine, batch, share, self._temperatures(batch)).cpu()
        masks = (batch.attempt1_mask.bool().cpu(), batch.attempt2_mask.bool().cpu())
        return [
            (logprobs[row][masks[0][row]].tolist(), logprobs[row][masks[1][row]].tolist())
            for row in range(len(batch))
        ]

    @torch.no_grad()
    def sequence_logprobs(self, token_id_lists: list[list[int]]) -> list[list[float]]:
        """log p(token_t | tokens_<t) for t >= 1, under the current policy."""
        self.engine.eval()
        out = []
        for ids in token_id_lists:
            input_ids = torch.tensor([ids], device=self.engine.device)
            mask = torch.ones_like(input_ids)
            logits = self.engine(input_ids=input_ids, attention_mask=mask).logits
            out.append(token_logprobs(logits, input_ids)[0, 1:].tolist())
        return out

    def named_parameters_gathered(
        self, dtype: torch.dtype, device: Any = "cpu", every_rank: bool = False
    ):
        """Yield (name, full tensor) one parameter at a time, to rank 0 (to every rank with
        `every_rank`). Under ZeRO-3 every rank must iterate (each gather is a collective);
        only one parameter is whole at once."""
        import deepspeed

        if self.lora:  # config validation keeps LoRA at ZeRO <= 2: parameters are whole
            if every_rank or self.rank == 0:
                for name, tensor in merged_named_parameters(self.engine.module):
                    yield name, tensor.to(dtype=dtype, device=device, copy=True)
            return
        zero3 = self.cfg.learner.zero_stage == 3
        for name, param in self.engine.module.named_parameters():
            context = (
                deepspeed.zero.GatheredParameters([param], modifier_rank=None)
                if zero3
                else nullcontext()
            )
            with context:
                if every_rank or self.rank == 0:
                    yield name, param.detach().to(dtype=dtype, device=device, copy=True)

    def weight_specs(self) -> list[ParamSpec]:
        """(vLLM name, full shape, rollout dtype) of every parameter, without gathering
        (ZeRO-3 keeps the full shape in `ds_shape`)."""
        dtype = _TORCH_DTYPES[self.cfg.rollout.dtype]
        if self.lora:  # the merged weights, under the base names
            return [
                (name, shape, dtype) for name, shape in base_parameter_shapes(self.engine.module)
            ]
        return [
            (vllm_weight_name(name), list(getattr(param, "ds_shape", param.shape)), dtype)
            for name, param in self.engine.module.named_parameters()
        ]

    def describe_weights(self, version: int) -> WeightHandle:
        """What a sync of `version` will send: vLLM's update info, known before the data."""
        specs = self.weight_specs()
        return WeightHandle(
            version, self.transport.name, update_info(specs), spec_bytes(specs), len(specs)
        )

    def init_weight_transport(self, init_info: dict[str, Any]) -> None:
        """Rank 0: join the transfer group with the rollout workers (nccl)."""
        self.transport.connect_sender(init_info)

    def send_weights(self, version: int) -> WeightHandle | None:
        """Publish the current weights (in the rollout dtype). Returns the handle on rank 0."""
        dtype = _TORCH_DTYPES[self.cfg.rollout.dtype]
        name = self.transport.name
        tensors = self.named_parameters_gathered(
            dtype,
            device="cpu" if name == "object_store" else self.engine.device,
            every_rank=name == "cuda_ipc",  # each rank serves the rollout on its GPU
        )
        if self.rank != 0 and name != "cuda_ipc":
            for _ in tensors:  # take part in ZeRO-3 gathers
                pass
            return None
        named = ((vllm_weight_name(key), tensor) for key, tensor in tensors)
        if name == "nccl":
            named = check_specs(named, self.weight_specs())
        return self.transport.send(named, version)

    def send_adapter(self, version: int) -> WeightHandle | None:
        """learner.lora.sync=adapter, rank 0: publish the adapter alone (a few MB) to the Ray
        object store, whatever sync.transport is; the rollout loads it as a vLLM LoRA."""
        if self.rank != 0:  # ZeRO <= 2: rank 0 holds the whole adapter
            return None
        import ray

        files = adapter_files(self.engine.module)
        num_tensors = sum(1 for name, _ in self.engine.module.named_parameters() if "lora_" in name)
        size = sum(len(data) for data in files.values())
        return WeightHandle(version, ADAPTER_TRANSPORT, ray.put(files), size, num_tensors)

    def release_weights(self) -> None:
        """After the rollout workers loaded a sync: free what the transport kept (cuda_ipc:
        the exported copy) and return it to the driver, before vLLM maps its KV cache."""
        self.transport.release()
        self.free_gpu_cache()

    def save_checkpoint(self, directory: str) -> None:
        """Model, optimizer and scheduler state of this rank (collective: all ranks). To a
        URI: written on this node, then uploaded (`staged_write`)."""
        with staged_write(directory) as local:
            # LoRA: the frozen base comes from model.path on resume; only the adapter and
            # its optimizer state are run state (a few MB instead of the whole model).
            self.engine.save_checkpoint(local, tag="learner", exclude_frozen_parameters=self.lora)

    def load_checkpoint(self, directory: str) -> None:
        with staged_read(directory) as local:  # a URI is downloaded to this node first
            # LoRA checkpoints hold the adapter only; the base weights are already loaded.
            path, _ = self.engine.load_checkpoint(
                local, tag="learner", load_module_strict=not self.lora
            )
        if path is None:
            raise FileNotFoundError(f"no learner checkpoint in {directory}")

    def save_pretrained(self, path: str) -> None:
        """Write an HF folder (weights, config, tokenizer) that transformers and vLLM load."""
        from transformers import AutoTokenizer

        state = dict(self.named_parameters_gathered(_TORCH_DTYPES[self.cfg.model.dtype]))
        if self.rank != 0:
            return
        # With LoRA, `state` holds the merged weights under the base names; the base
        # model's own class writes them (its config, no adapter_config.json).
        module = self.engine.module.get_base_model() if self.lora else self.engine.module
        with staged_write(path) as local:  # a URI: written here, then uploaded
            module.save_pretrained(local, state_dict=state, safe_serialization=True)
            AutoTokenizer.from_pretrained(self.model_path).save_pretrained(local)
            generation_config = getattr(module, "generation_config", None)
            if generation_config is not None:
                generation_config.save_pretrained(local)

    def save_adapter(self, path: str) -> None:
        """LoRA only: write the peft adapter alone (adapter_config.json and weights), which
        `peft.PeftModel.from_pretrained(base, path)` or vLLM's LoRA support load."""
        if not self.lora:
            raise ValueError("save_adapter needs learner.lora.rank > 0")
        if self.rank != 0:  # ZeRO <= 2: rank 0 holds the whole adapter
            return
        with staged_write(path) as local:
            self.engine.module.save_pretrained(local, safe_serialization=True)


def reference_bytes(model: Any) -> int:
    """Bytes of `model`'s parameters this process holds: a ZeRO-3 parameter's local partition
    (`ds_tensor`), except the small ones ZeRO-3 keeps whole on every rank (`ds_persist`,
    below stage3_param_persistence_threshold); else the whole tensor. 0 for None (no
    separate reference module)."""
    total = 0
    for param in model.parameters() if model is not None else ():
        partition = getattr(param, "ds_tensor", None)
        local = param if partition is None or getattr(param, "ds_persist", False) else partition
        total += local.numel() * local.element_size()
    return total


# Below this many shared tokens a second forward call costs more than it saves.
MIN_SHARED_PREFIX = 16


def shared_prefix_length(
    input_ids: torch.Tensor,  # [B, T]
    attention_mask: torch.Tensor,  # [B, T]
) -> int:
    """Number of leading columns in which every row holds the same, unpadded token."""
    same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0)  # [T]
    return int(same.int().cumprod(0).sum())


def _trim_padding(batch: TraceBatch) -> TraceBatch:
    """Drop columns that are padding in every row of this micro-batch."""
    longest = int(batch.attention_mask.sum(-1).max())
    return TraceBatch(*(tensor[:, :longest] for tensor in vars(batch).values()))


def _to_device(batch: TraceBatch, device: Any) -> TraceBatch:
    return TraceBatch(*(t.to(device) for t in vars(batch).values()))
