"""Problems from any reasoning-gym dataset (`task.name`, with `task.params` as its config).

The held-out split is generated with seed `task.seed` and the training split with a derived
seed, then the two are made disjoint by question text (see `score_ray.tasks.build_splits`).
reasoning-gym seeds item `i` with `Random(seed + i)`, so the training seed is offset by a
large prime to keep the two index ranges from sharing random streams.

Each Problem's `meta` carries everything the scorer needs to rescore it in another process:
the dataset name, its params, and the generated entry encoded as JSON (see `encode_entry`).
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Iterator
from typing import Any

from score_ray.config import TaskConfig
from score_ray.tasks import (
    Problem,
    TaskSplits,
    build_splits,
    question_uid,
    require_nonempty,
)

logger = logging.getLogger(__name__)

SOURCE = "reasoning_gym"
TRAIN_SEED_OFFSET = 1_000_003
"""Training seed = task.seed + this (a prime, far beyond any realistic split size)."""
EXTRA_FACTOR = 2
EXTRA_MARGIN = 64
"""Up to size * EXTRA_FACTOR + EXTRA_MARGIN items are generated per split to make up for
duplicates and eval overlap; small combinatorial datasets may still come up short."""
RESERVED_PARAMS = ("seed", "size")

# Tags that keep tuples, sets and non-string dict keys intact through JSON. They matter:
# e.g. arc_agi / rearc compare the parsed answer to a tuple-of-tuples grid in the metadata,
# which a plain JSON round trip would turn into lists and never match.
_TUPLE, _SET, _FROZENSET, _ITEMS = "__tuple__", "__set__", "__frozenset__", "__items__"
_TAGS = (_TUPLE, _SET, _FROZENSET, _ITEMS)


def load_reasoning_gym(task: TaskConfig) -> TaskSplits:
    """Generate disjoint held-out and training splits for the configured dataset."""
    name = task.name
    params = dict(task.params or {})
    eval_items = _generate(name, params, task.seed, task.eval_size)
    # Dev problems are the first of the training stream (build_splits), so generate both.
    train_items = _generate(
        name, params, task.seed + TRAIN_SEED_OFFSET, task.train_size + task.dev_size
    )
    splits = build_splits(
        eval_items,
        train_items,
        eval_size=task.eval_size,
        train_size=task.train_size,
        dev_size=task.dev_size,
    )
    require_nonempty(splits.eval, "task.name", f"reasoning-gym dataset {name!r} made no problems")
    require_nonempty(
        splits.train,
        "task.name",
        f"every generated {name!r} problem is also in the held-out split; the dataset has "
        "too few distinct questions (reduce task.eval_size or widen task.params)",
    )
    _warn_if_short(name, "eval", len(splits.eval), task.eval_size)
    _warn_if_short(name, "train", len(splits.train), task.train_size)
    _warn_if_short(name, "dev", len(splits.dev), task.dev_size)
    return splits


def _warn_if_short(name: str, split: str, got: int, wanted: int) -> None:
    if got < wanted:
        logger.warning(
            "reasoning-gym %r: %d distinct %s problems, %d requested", name, got, split, wanted
        )


def _generate(name: str, params: dict[str, Any], seed: int, size: int) -> Iterator[Problem]:
    """Lazily yield problems from a dataset sized to allow for the extra attempts."""
    capacity = size * EXTRA_FACTOR + EXTRA_MARGIN
    dataset = create_dataset(name, params, seed=seed, size=capacity)
    safe_params = encode_entry(params)
    for index in range(capacity):
        entry = dataset[index]
        answer = entry.get("answer")
        yield Problem(
            uid=question_uid(f"{SOURCE}/{name}", entry["question"]),
            question=entry["question"],
            # Some datasets (e.g. rush_hour) have no single gold answer: the scorer decides.
            answer="" if answer is None else str(answer),
            meta={
                "source": SOURCE,
                "dataset": name,
                "params": safe_params,
                "seed": seed,
                "index": index,
                "entry": encode_entry(entry),
            },
        )


def create_dataset(name: str, params: dict[str, Any], **kwargs: Any) -> Any:
    """`reasoning_gym.create_dataset` with errors that name the offending config key."""
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        close = difflib.get_close_matches(name, DATASETS, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(
            f"task.name: unknown reasoning-gym dataset {name!r}.{hint} Valid names include "
            f"{sorted(DATASETS)[:8]} ... ({len(DATASETS)} in all)"
        )
    reserved = [key for key in RESERVED_PARAMS if key in params]
    if reserved:
        raise ValueError(f"task.params: {reserved} are set by score-ray (use task.seed etc.)")
    try:
        return reasoning_gym.create_dataset(name, **params, **kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        # Unknown keyword (TypeError) or a config `validate()` failure (assert / ValueError).
        raise ValueError(f"task.params: invalid for reasoning-gym {name!r}: {err}") from err


def encode_entry(value: Any) -> Any:
    """Make a reasoning-gym value JSON-serialisable, losslessly for tuples, sets and
    non-string dict keys (tagged), so `decode_entry` restores what the scorer compares."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        # NaN / inf are not JSON; they only ever appear in metadata the scorers don't use.
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        if all(isinstance(key, str) and key not in _TAGS for key in value):
            return {key: encode_entry(item) for key, item in value.items()}
        return {_ITEMS: [[encode_entry(k), encode_entry(v)] for k, v in value.items()]}
    if isinstance(value, list):
        return [encode_entry(item) for item in value]
    if isinstance(value, tuple):
        return {_TUPLE: [encode_entry(item) for item in value]}
    if isinstance(value, (set, frozenset)):
        tag = _FROZENSET if isinstance(value, frozenset) else _SET
        return {tag: [encode_entry(item) for item in value]}
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return encode_entry(value.tolist())
    return str(value)  # anything else (Fraction, custom objects): best effort


def decode_entry(value: Any) -> Any:
    """Inverse of `encode_entry`."""
    if isinstance(value, list):
        return [decode_entry(item) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        tag, items = next(iter(value.items()))
        if tag == _TUPLE:
            return tuple(decode_entry(item) for item in items)
        if tag == _SET:
            return {decode_entry(item) for item in items}
        if tag == _FROZENSET:
            return frozenset(decode_entry(item) for item in items)
        if tag == _ITEMS:
            return {decode_entry(k): decode_entry(v) for k, v in items}
    return {key: decode_entry(item) for key, item in value.items()}
