"""Run metrics: one JSON line per step in metrics.jsonl, the same scalars in TensorBoard."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class MetricsLogger:
    def __init__(self, output_dir: str | os.PathLike, resume_step: int | None = None) -> None:
        """With `resume_step`, records of later steps (written after the checkpoint the
        run resumes from) are dropped, so every step appears exactly once."""
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        purge = None
        if resume_step is not None:
            self.truncate_after(resume_step)
            purge = resume_step + 1
        self.tensorboard = SummaryWriter(
            log_dir=str(Path(output_dir) / "tensorboard"), purge_step=purge
        )

    def log(self, record: dict[str, Any], global_step: int) -> None:
        """Append and flush, so a crash loses at most the line being written."""
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tensorboard.add_scalar(key, value, global_step)
        self.tensorboard.flush()

    def truncate_after(self, step: int) -> None:
        """Atomically keep only records with record['step'] <= step (and drop a torn
        last line left by a crash)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def close(self) -> None:
        self.tensorboard.close()
