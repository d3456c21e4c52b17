"""Run metrics: one JSON line per step in metrics.jsonl, and the same scalars in every
experiment tracker that `logging.backends` names (tensorboard, wandb, mlflow).

metrics.jsonl is the run's own record (the report and `--resume` read it). Each tracker
gets, from the one `MetricsLogger.log` call:

    every numeric field of every record     at the record's global step
    the resolved config                     once, when the logger opens
    the final evaluation                    `log_final`: W&B summary, MLflow metrics and
                                            TensorBoard scalars under `final/`

A run keeps its W&B run id and MLflow run id in OUTPUT_DIR/tracking.json, so a logger that
is opened again (`score-ray train --resume`, or the trainer's roll-back after a learner
failure) continues the same tracked runs instead of starting new ones. Steps written after
the checkpoint a run rolls back to are dropped from metrics.jsonl and TensorBoard; W&B and
MLflow keep them (their histories are append-only), so they show the repeated steps twice.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from score_ray.config import Config, LoggingConfig

TRACKING_IDS = "tracking.json"
"""OUTPUT_DIR file with the W&B and MLflow run ids of this run."""
MLFLOW_PARAMS_PER_CALL = 100  # MLflow's log_batch limit
MLFLOW_PARAM_CHARS = 6000  # longest param value MLflow stores


def resolved_config(cfg: Config) -> dict[str, Any]:
    """The config as plain nested dicts and lists (what config.yaml holds)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: the dotted keys of the config, as `key=value` uses."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric fields of a record (bools and strings such as the eval tag are left out)."""
    return {
        key: value
        for key, value in record.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


# -- Trackers ------------------------------------------------------------------------------


class Tracker:
    """One experiment-tracking backend. The logger calls these in this order: log_config,
    log_scalars (every record), log_final (once), close."""

    name = ""

    def log_config(self, config: dict[str, Any]) -> None:
        raise NotImplementedError

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_final(self, final: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    """Event files in OUTPUT_DIR/tensorboard; on resume, events after the checkpoint are
    purged (`purge_step`) so every step appears once."""

    name = "tensorboard"

    def __init__(self, output_dir: Path, purge_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"), purge_step=purge_step)
        self.fresh = not purge_step  # None (new run) or 0 (restarting from nothing)

    def log_config(self, config: dict[str, Any]) -> None:
        if self.fresh:  # a resumed run's config text is already there
            import yaml

            # Indented: TensorBoard renders text as markdown, and this shows it verbatim.
            text = "".join(f"    {line}\n" for line in yaml.safe_dump(config).splitlines())
            self.writer.add_text("config", text, 0)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_final(self, final: dict[str, float], step: int) -> None:
        self.log_scalars({f"final/{key}": value for key, value in final.items()}, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    """A Weights & Biases run; its files go to OUTPUT_DIR/wandb (with WANDB_MODE=offline, all
    of it, for a later `wandb sync`). Charts use the record's `step` as their x axis, so a
    resumed run may log a step again without W&B dropping it as out of order."""

    name = "wandb"

    def __init__(self, output_dir: Path, section: LoggingConfig, run_id: str) -> None:
        import wandb

        self.run = wandb.init(
            project=section.project,
            name=section.run_name or output_dir.resolve().name,
            id=run_id,
            resume="allow",
            dir=str(output_dir),
            settings=wandb.Settings(console="off"),  # the driver's log stays in the terminal
        )
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log_config(self, config: dict[str, Any]) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log({**values, "step": step})

    def log_final(self, final: dict[str, float], step: int) -> None:
        self.run.summary.update({f"final/{key}": value for key, value in final.items()})

    def close(self) -> None:
        self.run.finish()


def mlflow_key(key: str) -> str:
    """A metric name for MLflow: "/" becomes ".". Its file store keeps each metric in a file
    named by the key, so `loss` and `loss/pg` would be a file and a folder of one name."""
    return key.replace("/", ".")


class MlflowTracker(Tracker):
    """An MLflow run, by the client API (no global active run). Without a tracking URI the
    store is a local folder, OUTPUT_DIR/mlruns (`MLFLOW_ALLOW_FILE_STORE=true mlflow ui
    --backend-store-uri` that path).
    Metric names are the records' keys with "/" written as "." (`mlflow_key`)."""

    name = "mlflow"

    def __init__(self, output_dir: Path, section: LoggingConfig, run_id: str | None) -> None:
        from mlflow.tracking import MlflowClient

        uri = section.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (output_dir / "mlruns").resolve().as_uri()
            # MLflow 3 refuses a file store unless asked: this default is one on purpose.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.new_run = run_id is None
        if run_id is None:
            experiment = self.client.get_experiment_by_name(section.project)
            experiment_id = (
                experiment.experiment_id
                if experiment
                else self.client.create_experiment(section.project)
            )
            run_name = section.run_name or output_dir.resolve().name
            run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log_config(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_dict(self.run_id, config, "config.yaml")
        if not self.new_run:
            return  # MLflow params are write-once; a resumed run's are already there
        params = [
            Param(key, str(value)[:MLFLOW_PARAM_CHARS]) for key, value in flatten(config).items()
        ]
        for start in range(0, len(params), MLFLOW_PARAMS_PER_CALL):
            self.client.log_batch(
                self.run_id, params=params[start : start + MLFLOW_PARAMS_PER_CALL]
            )

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(mlflow_key(key), float(value), now, step) for key, value in values.items()
        ]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_final(self, final: dict[str, float], step: int) -> None:
        self.log_scalars({f"final/{key}": value for key, value in final.items()}, step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def open_trackers(
    section: LoggingConfig, output_dir: Path, purge_step: int | None
) -> list[Tracker]:
    """The trackers of `logging.backends`, continuing this run's W&B / MLflow runs if
    OUTPUT_DIR/tracking.json names them."""
    ids_path = output_dir / TRACKING_IDS
    ids = json.loads(ids_path.read_text()) if ids_path.is_file() else {}
    trackers: list[Tracker] = []
    for name in section.backends:
        if name == "tensorboard":
            trackers.append(TensorBoardTracker(output_dir, purge_step))
        elif name == "wandb":
            ids.setdefault("wandb", uuid.uuid4().hex[:12])
            trackers.append(WandbTracker(output_dir, section, ids["wandb"]))
        elif name == "mlflow":
            tracker = MlflowTracker(output_dir, section, ids.get("mlflow"))
            ids["mlflow"] = tracker.run_id
            trackers.append(tracker)
        else:  # validate() rejects it first; this keeps a typo from passing silently
            raise ValueError(f"logging.backends: unknown backend {name!r}")
    if ids:
        ids_path.write_text(json.dumps(ids, indent=2) + "\n")
    return trackers


# -- The logger the trainer uses -----------------------------------------------------------


class MetricsLogger:
    def __init__(
        self,
        output_dir: str | os.PathLike,
        resume_step: int | None = None,
        cfg: Config | None = None,
    ) -> None:
        """With `resume_step`, records of later steps (written after the checkpoint the
        run resumes from) are dropped, so every step appears exactly once. `cfg` chooses
        the trackers (`logging.backends`) and is logged to them; without it, TensorBoard
        only."""
        from score_ray.config import LoggingConfig

        output = Path(output_dir)
        self.path = output / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        purge = None
        if resume_step is not None:
            self.truncate_after(resume_step)
            purge = resume_step + 1
        section = cfg.logging if cfg is not None else LoggingConfig()
        self.trackers = open_trackers(section, output, purge)
        if cfg is not None:
            config = resolved_config(cfg)
            for tracker in self.trackers:
                tracker.log_config(config)

    def log(self, record: dict[str, Any], global_step: int) -> None:
        """Append and flush, so a crash loses at most the line being written; then the
        record's numeric fields to every tracker."""
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        values = scalars(record)
        for tracker in self.trackers:
            tracker.log_scalars(values, global_step)

    def log_final(self, final: dict[str, float], global_step: int) -> None:
        """The final evaluation (acc_t1, acc_t2, delta, ...) as the run's summary."""
        for tracker in self.trackers:
            tracker.log_final(scalars(final), global_step)

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
        for tracker in self.trackers:
            tracker.close()
