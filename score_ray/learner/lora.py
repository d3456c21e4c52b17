"""LoRA on the learner: wrap the policy with a peft adapter, and read merged weights out of it.

With `learner.lora.rank` > 0 the learner trains only B and A of each target linear layer:

    y = x W^T + scale * (x A^T) B^T,   W [out, in] frozen,  A [r, in],  B [out, r],
    scale = alpha / r                  (Hu et al., 2021, "LoRA", Eq. 3; peft's `scaling`)

The reference model for the KL terms is the same module with the adapter disabled
(`model.disable_adapter()`): exactly the base weights, with no second copy.

Weight sync (`learner.lora.sync=merged`) sends, for every base parameter, the weight the
rollout must serve: W + scale * B @ A for targets, the frozen tensor otherwise, under the
base model's own names. vLLM needs no LoRA support, and the trained module is never
changed (peft's `merge_adapter` would add into W in place and must be undone exactly).

Everything here is plain torch + peft, no Ray or DeepSpeed, so it is unit-tested directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from score_ray.config import LoraConfig

ADAPTER = "default"  # peft's name for the one adapter we train
PEFT_PREFIX = "base_model.model."  # what PeftModel adds before the wrapped model's names
BASE_LAYER = ".base_layer"  # what a peft LoRA layer adds before its wrapped layer's names
LORA_PARTS = (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B", ".lora_magnitude")


def merged_weight(
    weight: torch.Tensor,  # [out, in] the frozen base weight W
    lora_a: torch.Tensor,  # [r, in]
    lora_b: torch.Tensor,  # [out, r]
    scale: float,  # alpha / r
    fan_in_fan_out: bool = False,  # W stored as [in, out] (GPT-2's Conv1D)
) -> torch.Tensor:
    """W + scale * B @ A, computed in float32 and returned in W's dtype (a new tensor: W is
    not changed). The result is what the rollout engine must serve for this layer."""
    delta = scale * (lora_b.float() @ lora_a.float())  # [out, in]
    if fan_in_fan_out:
        delta = delta.T
    return (weight.float() + delta).to(weight.dtype)


def base_parameter_name(name: str) -> str:
    """The base model's name of a parameter of the peft-wrapped policy:
    base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight
    -> model.layers.0.self_attn.q_proj.weight."""
    return name.removeprefix(PEFT_PREFIX).replace(BASE_LAYER + ".", ".")


def is_adapter_parameter(name: str) -> bool:
    """True for LoRA's own tensors (A, B, ...), which have no place in the base model."""
    return any(part in name for part in LORA_PARTS)


def wrap_with_lora(model: Any, lora: LoraConfig) -> Any:
    """The policy wrapped in a peft LoRA adapter: base weights frozen, B = 0 at the start (so
    the wrapped policy is exactly the base model until the first update)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    peft_config = PeftLoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        target_modules=list(lora.target_modules),
        lora_dropout=lora.dropout,
        bias="none",
        task_type="CAUSAL_LM",
    )
    wrapped = get_peft_model(model, peft_config)
    for name, module in wrapped.named_modules():
        # The merged sync computes W + scale * B @ A itself; only for plain linear layers.
        if isinstance(module, LoraLayer) and not isinstance(module, LoraLinear):
            raise ValueError(
                f"learner.lora.target_modules: {name} is a {type(module).__name__}; "
                "only linear layers are supported"
            )
    return wrapped


def lora_layers(model: Any) -> dict[str, Any]:
    """Name (as in named_parameters, without the trailing .base_layer) -> peft LoRA layer."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def merged_named_parameters(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """(base name, tensor to serve) for every parameter of the base model, adapters merged:
    what a full-weight sync or a merged HF folder holds. Target weights are new tensors;
    the others are the module's own (detached), so callers copy before changing them."""
    layers = lora_layers(model)
    for name, param in model.named_parameters():
        if is_adapter_parameter(name):
            continue
        owner, _, leaf = name.rpartition(BASE_LAYER + ".")
        layer = layers.get(owner) if owner else None
        tensor = param.detach()
        if layer is not None and leaf == "weight" and ADAPTER in layer.lora_A:
            tensor = merged_weight(
                tensor,
                layer.lora_A[ADAPTER].weight.detach(),
                layer.lora_B[ADAPTER].weight.detach(),
                layer.scaling[ADAPTER],
                getattr(layer, "fan_in_fan_out", False),
            )
        yield base_parameter_name(name), tensor


def base_parameter_shapes(model: Any) -> list[tuple[str, list[int]]]:
    """(base name, shape) of every base parameter, in `merged_named_parameters`' order,
    without computing any merge (the nccl transport needs them before the data)."""
    return [
        (base_parameter_name(name), list(param.shape))
        for name, param in model.named_parameters()
        if not is_adapter_parameter(name)
    ]


# vLLM's accepted max_lora_rank values (vllm/config/lora.py, MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
ADAPTER_TRANSPORT = "lora_adapter"  # WeightHandle.transport of an adapter-only sync


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds an adapter of rank `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"learner.lora.rank {rank} is above vLLM's largest ({VLLM_LORA_RANKS[-1]})")


def adapter_files(model: Any) -> dict[str, bytes]:
    """The peft adapter as its files (adapter_config.json, adapter_model.safetensors): the
    format vLLM's LoRA loader reads, so the rollout side writes them out and loads them."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="score-ray-adapter-") as folder:
        model.save_pretrained(folder, safe_serialization=True)
        return {path.name: path.read_bytes() for path in Path(folder).iterdir() if path.is_file()}


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors by their full names: what a LoRA checkpoint must hold."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters the optimizer must see (with LoRA: only the adapter's)."""
    return [param for param in model.parameters() if param.requires_grad]
