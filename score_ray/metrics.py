"""Run metrics: one JSON line per step in metrics.jsonl, the same scalars in TensorBoard."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class MetricsLogger:
    def __init__(self, output_dir: str | os.PathLike) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tensorboard = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))

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

    def close(self) -> None:
        self.tensorboard.close()
