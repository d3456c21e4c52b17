"""Checkpoints: learner state plus driver state, committed atomically.

Layout under OUTPUT_DIR/checkpoints/:

    step_000004/
        learner/            DeepSpeed checkpoint (model, optimizer, scheduler; every rank)
        driver_state.json   stage, step, weight version, data position, RNG states
    latest                  name of the newest complete checkpoint

A checkpoint is first written to `.tmp-step_N/` and renamed into place only
when every rank and the driver state are on disk, then `latest` is replaced
atomically. A crash mid-write leaves a `.tmp-*` folder that is ignored (and
removed next time), so the previous checkpoint stays usable. With several
nodes, OUTPUT_DIR must be on storage all learner nodes share.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

DRIVER_STATE = "driver_state.json"
LATEST = "latest"


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def write_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    driver_state: dict[str, Any],
    write_learner: Callable[[str], None],
    keep: int,
) -> Path:
    """Write step `step`'s checkpoint atomically; keep the newest `keep` checkpoints."""
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    tmp, final = root / f".tmp-{name}", root / name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_learner(str(tmp / "learner"))
    _write_json(tmp / DRIVER_STATE, driver_state)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    _fsync_dir(root)
    _replace_text(root / LATEST, name)
    _prune(root, keep)
    return final


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint, or None. Trusts `latest`, else scans."""
    root = checkpoint_root(output_dir)
    pointer = root / LATEST
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / DRIVER_STATE).is_file():
            return candidate
    complete = [p for p in _step_dirs(root) if (p / DRIVER_STATE).is_file()]
    return complete[-1] if complete else None


def read_driver_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / DRIVER_STATE).read_text())


def _step_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def _prune(root: Path, keep: int) -> None:
    for stale in root.iterdir():
        if stale.name.startswith(".tmp-"):
            shutil.rmtree(stale, ignore_errors=True)
    for old in _step_dirs(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with path.open("w") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
