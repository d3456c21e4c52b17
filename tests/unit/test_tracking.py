"""Experiment tracking: the same scalars, the resolved config and the final evaluation reach
TensorBoard, W&B (offline mode) and MLflow (a local file store), read back from what each
backend wrote to disk, as its own tools would read it."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from score_ray.config import ConfigError, load_config
from score_ray.metrics import TRACKING_IDS, MetricsLogger, flatten, resolved_config

BACKENDS = "logging.backends=[tensorboard,wandb,mlflow]"
# Values exact in float32 (TensorBoard stores float32); `loss` with `loss/pg` below it, as
# the learner logs them (a name that is also a prefix: MLflow's file store needs mlflow_key).
RECORDS = [
    {"stage": 1, "step": 1, "loss": 0.5, "loss/pg": 0.375, "acc/t1": 0.25, "reward/attempt2": 1.5},
    {
        "stage": 1,
        "step": 2,
        "loss": 0.25,
        "loss/pg": 0.125,
        "acc/t1": 0.5,
        "reward/attempt2": -10.0,
    },
    {"eval": "final", "step": 2, "eval/acc_t1": 0.75, "eval/delta": 0.125},
]
FINAL = {"acc_t1": 0.75, "acc_t2": 0.875, "delta": 0.125}


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    """W&B without a network or an account: offline mode, its caches in tmp_path."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def run_logger(output: Path, overrides: list[str], records=RECORDS, resume_step=None) -> Any:
    cfg = load_config(None, [f"output_dir={output}", *overrides])
    logger = MetricsLogger(output, resume_step=resume_step, cfg=cfg)
    for record in records:
        logger.log(record, record["step"])
    logger.log_final(FINAL, records[-1]["step"])
    logger.close()
    return cfg


def expected_points(records: list[dict[str, Any]]) -> set[tuple[str, int, float]]:
    points = set()
    for record in records:
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                points.add((key, record["step"], float(value)))
    points |= {(f"final/{key}", records[-1]["step"], value) for key, value in FINAL.items()}
    return points


# -- Readers: what each backend wrote ------------------------------------------------------


def tensorboard_points(output: Path) -> tuple[set[tuple[str, int, float]], str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(output / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    points = {
        (tag, event.step, event.value)
        for tag in events.Tags()["scalars"]
        for event in events.Scalars(tag)
    }
    # Text summaries are stored as tensors by the text plugin.
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    return points, config_text


def wandb_records(path: Path):
    """The protobuf records of a `.wandb` file: W&B's 7-byte header, then LevelDB-style log
    blocks of 32 KiB, each record chunk prefixed by crc32 (4), length (2) and type (1)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, position, pending = 32768, 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0:
            position += left
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_run(output: Path) -> dict[str, Any]:
    """History points (by our `step`), config and summary of the one offline run."""
    (path,) = output.glob("wandb/offline-run-*/run-*.wandb")
    found: dict[str, Any] = {"points": set(), "config": {}, "summary": {}}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            items = record.run.config.update
            found["config"].update({i.key: json.loads(i.value_json) for i in items})
        elif kind == "config":
            found["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            row = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json)
                for i in record.history.item
            }
            found["points"] |= {
                (key, int(row["step"]), float(value))
                for key, value in row.items()
                if not key.startswith("_")  # W&B's own _step, _runtime, _timestamp
            }
        elif kind == "summary":
            found["summary"].update(
                {i.key: json.loads(i.value_json) for i in record.summary.update if i.key}
            )
    return found


def mlflow_run(output: Path) -> tuple[set[tuple[str, int, float]], dict[str, str], dict, Any]:
    """Metric points, params, the config.yaml artifact and the run info, from the file store."""
    import yaml
    from mlflow.tracking import MlflowClient

    # MLflow 3 reads a file store only when asked: what the tracker set in the run's process.
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    run_id = json.loads((output / TRACKING_IDS).read_text())["mlflow"]
    client = MlflowClient(tracking_uri=(output / "mlruns").resolve().as_uri())
    run = client.get_run(run_id)
    points = {
        (key.replace(".", "/"), metric.step, metric.value)  # mlflow_key wrote "/" as "."
        for key in run.data.metrics
        for metric in client.get_metric_history(run_id, key)
    }
    local = client.download_artifacts(run_id, "config.yaml", str(output / "download"))
    config = yaml.safe_load(Path(local).read_text())
    return points, run.data.params, config, run.info


# -- Tests ---------------------------------------------------------------------------------


def test_every_backend_gets_the_same_scalars_config_and_final_eval(tmp_path, offline_wandb):
    output = tmp_path / "run"
    cfg = run_logger(output, [BACKENDS, "learner.lr=3e-6"])
    expected = expected_points(RECORDS)
    config = flatten(resolved_config(cfg))

    tb_points, tb_config = tensorboard_points(output)
    assert tb_points == expected
    assert "lr: 3.0e-06" in tb_config

    wandb = wandb_run(output)
    assert wandb["points"] == expected - {p for p in expected if p[0].startswith("final/")}
    assert wandb["summary"]["final/acc_t2"] == 0.875
    assert wandb["config"]["learner"]["lr"] == 3e-6
    assert wandb["config"]["logging"]["backends"] == ["tensorboard", "wandb", "mlflow"]

    ml_points, params, ml_config, info = mlflow_run(output)
    assert ml_points == expected
    assert params["learner.lr"] == str(config["learner.lr"]) == "3e-06"
    assert params["model.path"] == cfg.model.path
    assert ml_config["learner"]["lr"] == 3e-6
    assert info.status == "FINISHED" and info.run_name == "run"
    assert len(params) == len(config)  # every key, past MLflow's 100-per-call limit


def test_a_resumed_run_continues_the_same_tracked_runs(tmp_path, offline_wandb):
    output = tmp_path / "run"
    run_logger(output, [BACKENDS], records=RECORDS[:1])
    ids = json.loads((output / TRACKING_IDS).read_text())
    run_logger(output, [BACKENDS, "train.stage2_steps=20"], records=RECORDS[1:], resume_step=1)
    assert json.loads((output / TRACKING_IDS).read_text()) == ids
    ml_points, params, ml_config, _ = mlflow_run(output)
    assert ("loss", 1, 0.5) in ml_points and ("loss", 2, 0.25) in ml_points
    assert params["train.stage2_steps"] == "10"  # params are write-once: the first run's
    assert ml_config["train"]["stage2_steps"] == 20  # the artifact holds the newest config
    runs = list(output.glob("wandb/offline-run-*/run-*.wandb"))
    assert {path.name for path in runs} == {f"run-{ids['wandb']}.wandb"}
    tb_points, _ = tensorboard_points(output)
    assert {p for p in tb_points if p[0] == "loss"} == {("loss", 1, 0.5), ("loss", 2, 0.25)}


def test_tensorboard_alone_is_the_default(tmp_path):
    output = tmp_path / "run"
    run_logger(output, [])
    assert list((output / "tensorboard").glob("events.out.tfevents.*"))
    assert not (output / "wandb").exists() and not (output / "mlruns").exists()
    assert not (output / TRACKING_IDS).exists()
    lines = (output / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == RECORDS


def test_bad_backends_are_named():
    with pytest.raises(ConfigError, match=r"logging\.backends: unknown backend 'neptune'"):
        load_config(None, ["logging.backends=[tensorboard,neptune]"])
    with pytest.raises(ConfigError, match=r"logging\.backends: listed twice"):
        load_config(None, ["logging.backends=[wandb,wandb]"])


def test_a_missing_tracker_package_is_named(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"logging\.backends: mlflow needs the `mlflow` package"):
        load_config(None, ["logging.backends=[mlflow]"])
