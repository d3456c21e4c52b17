"""A model's size from its config.json alone, without its weights: what `score-ray plan`
needs to size memory.

The architecture comes from the first of these that has it:

    --model-config PATH         a config.json (or a folder holding one) given on the command line
    a local model folder        model.path/config.json
    an alias                    its cached folder, else the embedded GGUF's metadata
                                (tiny-llama: that vocabulary with TINY_SHAPE)
    a hub id                    the Hugging Face cache; then score_ray/model_shapes/ (the
                                architecture fields of the recipes' models, shipped so a plan
                                works offline); then the hub itself (config.json only)

The parameter count is exact: transformers builds the model on PyTorch's `meta` device (no
memory, no weights) and its parameters are counted, tied embeddings once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from score_ray.config import EMBEDDED_MODEL, TINY_MODEL, ConfigError, ModelConfig

SHAPES_DIR = Path(__file__).with_name("model_shapes")


@dataclass(frozen=True)
class ModelFacts:
    source: str
    """Where the architecture was read."""
    model_type: str
    parameters: int
    vocab_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """KV-cache bytes one token takes in vLLM: a key and a value per layer and KV head."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes


def model_facts(model: ModelConfig, model_config: str | None = None) -> ModelFacts:
    """Size facts of `model.path` (or of the config.json at `model_config`)."""
    config, source = architecture(model, model_config)
    return facts_from_config(config, source)


def facts_from_config(config: dict[str, Any], source: str) -> ModelFacts:
    """Count the parameters of the model a config dict describes (on the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {key: value for key, value in config.items() if not key.startswith("_")}
    if "model_type" not in fields:
        raise ConfigError(f"model.path: {source} has no model_type; is it a config.json?")
    try:
        hf_config = AutoConfig.for_model(**fields)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"model.path: cannot build the model of {source}: {err}") from None
    text = hf_config.get_text_config()
    heads = text.num_attention_heads
    return ModelFacts(
        source=source,
        model_type=hf_config.model_type,
        parameters=sum(p.numel() for p in model.parameters()),
        vocab_size=text.vocab_size,
        num_layers=text.num_hidden_layers,
        num_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
    )


def architecture(model: ModelConfig, model_config: str | None = None) -> tuple[dict[str, Any], str]:
    """The model's config.json as a dict, and where it was read."""
    if model_config is not None:
        return read_config_json(Path(model_config).expanduser(), "--model-config")
    local = Path(model.path).expanduser()
    if local.is_dir():
        return read_config_json(local, "model.path")
    if model.path in (EMBEDDED_MODEL, TINY_MODEL):
        return alias_architecture(model.path, model.cache_dir)
    return hub_architecture(model.path)


def read_config_json(path: Path, key: str) -> tuple[dict[str, Any], str]:
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{key}: no config.json at {file}")
    try:
        return json.loads(file.read_text()), str(file)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{key}: {file} is not valid JSON: {err}") from None


def alias_architecture(alias: str, cache_dir: str) -> tuple[dict[str, Any], str]:
    """An alias's architecture without building it: its cached folder if complete, else the
    embedded GGUF's metadata (a few seconds; the tiny model shares its vocabulary)."""
    from score_ray.models import GGUF_NAME, MARKER, TINY_SHAPE, alias_folder, embedded_gguf_path

    folder = alias_folder(alias, cache_dir)
    if (folder / MARKER).is_file():
        return read_config_json(folder, "model.path")
    from transformers import AutoConfig

    gguf = embedded_gguf_path()
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name).to_dict()
    if alias == TINY_MODEL:
        return {**config, **TINY_SHAPE}, f"{GGUF_NAME} metadata with models.TINY_SHAPE"
    return config, f"{GGUF_NAME} metadata"


def hub_architecture(repo_id: str) -> tuple[dict[str, Any], str]:
    """A hub model's config.json: the local HF cache, then the shipped shape, then the hub."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HFValidationError

    try:
        cached = hf_hub_download(repo_id, "config.json", local_files_only=True)
        return read_config_json(Path(cached), "model.path")
    except (OSError, HFValidationError, ValueError):
        pass  # not in the cache (huggingface_hub raises LocalEntryNotFoundError, an OSError)
    shipped = SHAPES_DIR / f"{repo_id.replace('/', '--')}.json"
    if shipped.is_file():
        return read_config_json(shipped, "model.path")
    try:
        return read_config_json(Path(hf_hub_download(repo_id, "config.json")), "model.path")
    except Exception as err:  # network, auth, missing repo: all end here, named
        raise ConfigError(
            f"model.path: cannot read the config.json of {repo_id!r}: not a local folder, not "
            f"in the Hugging Face cache, not in {SHAPES_DIR.name}/, and the hub gave "
            f"{type(err).__name__}: {(str(err).splitlines() or [''])[0].rstrip('.')}. Pass "
            "--model-config PATH (the model's config.json) to plan without the hub."
        ) from None
