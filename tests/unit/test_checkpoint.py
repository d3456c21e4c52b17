"""Checkpoint commit protocol, object-storage staging and metrics truncation (no Ray).

Every protocol test runs on three roots: a local folder (ranks write in place, the driver
renames), a file:// URI and an s3:// URI on a real S3-compatible server on loopback (moto's
server mode), where each "rank" writes on its own disk and uploads.
"""

import json
import os
import uuid
from pathlib import Path

import pyarrow.fs
import pytest

from score_ray.checkpoint import (
    STAGING_PREFIX,
    checkpoint_root,
    latest_checkpoint,
    learner_dir,
    read_driver_state,
    staged_read,
    staged_write,
    write_checkpoint,
    write_final,
)
from score_ray.cli import _check_checkpoint_uri_is_new
from score_ray.config import ConfigError, load_config
from score_ray.metrics import MetricsLogger
from tests.s3_server import s3_server

BUCKET = "score-ray-unit"


@pytest.fixture(scope="module")
def s3_env():
    with s3_server(BUCKET) as env, pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield env


@pytest.fixture(params=["folder", "file_uri", "s3"])
def root(request, tmp_path) -> str:
    """A fresh checkpoint root of each kind."""
    if request.param == "folder":
        return str(checkpoint_root(tmp_path))
    if request.param == "file_uri":
        return f"file://{tmp_path}/checkpoints"
    request.getfixturevalue("s3_env")
    return f"s3://{BUCKET}/{uuid.uuid4().hex}/checkpoints"


@pytest.fixture(autouse=True)
def node_tmp(tmp_path, monkeypatch) -> Path:
    """This "node's" TMPDIR, where ranks stage their parts; checked for leftovers."""
    import tempfile

    node = tmp_path / "node-tmp"
    node.mkdir()
    monkeypatch.setenv("TMPDIR", str(node))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    return node


def _names(location: str) -> list[str]:
    """What lies directly under `location` (files and folders)."""
    if "://" in location:
        fs, path = pyarrow.fs.FileSystem.from_uri(location)
    else:
        fs, path = pyarrow.fs.LocalFileSystem(), location
    selector = pyarrow.fs.FileSelector(path, allow_not_found=True)
    return sorted(info.base_name for info in fs.get_file_info(selector))


def _rank_writer(*ranks: int, fail_rank: int | None = None, during=None):
    """A `write_learner` as the LearnerGroup runs it: each rank stages its part (on its own
    disk for a URI), then uploads it. `fail_rank` raises after writing; `during(rank)` runs
    before each rank's upload."""

    def write(location: str) -> None:
        for rank in ranks:
            with staged_write(location) as local:
                Path(local).mkdir(parents=True, exist_ok=True)
                (Path(local) / f"rank{rank}.bin").write_bytes(b"w%d" % rank)
                if during:
                    during(rank)
                if rank == fail_rank:
                    raise OSError(f"rank {rank}: disk vanished")

    return write


def _learner_files(checkpoint: str) -> dict[str, bytes]:
    with staged_read(learner_dir(checkpoint)) as local:
        return {p.name: p.read_bytes() for p in Path(local).iterdir()}


def test_write_then_latest_round_trip(root, node_tmp):
    write_checkpoint(root, 3, {"global_step": 3, "stage": 1}, _rank_writer(0, 1), keep=2)
    found = latest_checkpoint(root)
    assert found.endswith("/step_000003")
    assert read_driver_state(found) == {"global_step": 3, "stage": 1}
    assert _learner_files(found) == {"rank0.bin": b"w0", "rank1.bin": b"w1"}
    assert list(node_tmp.iterdir()) == []  # staging folders are removed after upload/download


def test_crash_mid_write_keeps_previous_checkpoint(root, node_tmp):
    write_checkpoint(root, 1, {"global_step": 1}, _rank_writer(0, 1), keep=2)
    with pytest.raises(OSError, match="rank 1"):
        write_checkpoint(root, 2, {"global_step": 2}, _rank_writer(0, 1, fail_rank=1), keep=2)
    assert latest_checkpoint(root).endswith("/step_000001")
    assert list(node_tmp.iterdir()) == []
    # the torn attempt is cleaned up by the next successful write
    write_checkpoint(root, 3, {"global_step": 3}, _rank_writer(0, 1), keep=2)
    assert _names(root) == ["latest", "step_000001", "step_000003"]


def test_keep_prunes_oldest(root):
    for step in range(1, 5):
        write_checkpoint(root, step, {"global_step": step}, _rank_writer(0), keep=2)
    assert _names(root) == ["latest", "step_000003", "step_000004"]


def test_latest_falls_back_to_scan_when_pointer_is_stale(root, tmp_path):
    write_checkpoint(root, 1, {"global_step": 1}, _rank_writer(0), keep=3)
    write_checkpoint(root, 2, {"global_step": 2}, _rank_writer(0), keep=3)
    fs, path = (
        pyarrow.fs.FileSystem.from_uri(root)
        if "://" in root
        else (pyarrow.fs.LocalFileSystem(), root)
    )
    with fs.open_output_stream(f"{path}/latest") as out:
        out.write(b"step_000009")
    assert latest_checkpoint(root).endswith("/step_000002")
    assert latest_checkpoint(root.replace("checkpoints", "elsewhere")) is None


@pytest.mark.parametrize("kind", ["file_uri", "s3"])
def test_latest_moves_only_after_every_part_is_uploaded(kind, request, tmp_path):
    request.getfixturevalue("s3_env") if kind == "s3" else None
    root = f"s3://{BUCKET}/{uuid.uuid4().hex}/ck" if kind == "s3" else f"file://{tmp_path}/ck"
    write_checkpoint(root, 1, {"global_step": 1}, _rank_writer(0, 1), keep=2)
    seen = []

    def before_upload(rank: int) -> None:
        # Rank 0's part of step 2 is already up when rank 1 is about to upload.
        seen.append((rank, latest_checkpoint(root).rsplit("/", 1)[1]))

    write_checkpoint(root, 2, {"global_step": 2}, _rank_writer(0, 1, during=before_upload), 2)
    assert seen == [(0, "step_000001"), (1, "step_000001")]
    assert latest_checkpoint(root).endswith("/step_000002")


def test_a_uri_checkpoint_without_its_driver_state_is_never_used(s3_env):
    root = f"s3://{BUCKET}/torn/ck"
    write_checkpoint(root, 1, {"global_step": 1}, _rank_writer(0), keep=2)
    # Every rank's part of step 2 is up, but the driver died before committing it.
    _rank_writer(0, 1)(learner_dir(f"{root}/step_000002"))
    assert latest_checkpoint(root).endswith("/step_000001")


def test_staged_read_of_a_missing_part_names_it(s3_env):
    with (
        pytest.raises(FileNotFoundError, match="nothing/here"),
        staged_read(f"s3://{BUCKET}/nothing/here"),
    ):
        pass


def test_final_reaches_output_dir_through_the_uri(s3_env, tmp_path):
    uri = f"s3://{BUCKET}/final-test/ck"
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", f"train.checkpoint_uri={uri}/"])

    def save_pretrained(location: str) -> None:  # rank 0 of the learner, on some node
        assert location == f"{uri}/final"
        with staged_write(location) as local:
            (Path(local) / "config.json").write_text("{}")

    local = write_final(cfg, save_pretrained)
    assert (local / "config.json").read_text() == "{}"
    assert _names(f"{uri}/final") == ["config.json"]


def test_learner_folder_without_a_uri_is_written_in_place(tmp_path):
    target = str(tmp_path / "learner")
    with staged_write(target) as local:
        assert local == target
    with staged_read(target) as local:
        assert local == target
    assert not any(p.name.startswith(STAGING_PREFIX) for p in tmp_path.iterdir())


# -- Config and CLI checks -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, why",
    [
        ("hdfs://namenode/ckpt", "must be a URI starting with one of"),
        ("/plain/path", "must be a URI starting with one of"),
        ("s3://", "names no bucket"),
        ("file://relative/dir", "absolute path"),
    ],
)
def test_a_bad_checkpoint_uri_names_the_key(value, why):
    with pytest.raises(ConfigError, match=r"train\.checkpoint_uri: .*" + why.replace("(", r"\(")):
        load_config(None, [f"train.checkpoint_uri={value}"])


def test_good_checkpoint_uris_load_and_output_dir_must_be_local():
    for uri in ("s3://bucket/run", "gs://bucket/run/ckpt", "file:///mnt/shared/ckpt"):
        assert load_config(None, [f"train.checkpoint_uri={uri}"]).train.checkpoint_uri == uri
    with pytest.raises(ConfigError, match=r"output_dir: must be a local folder.*checkpoint_uri"):
        load_config(None, ["output_dir=s3://bucket/run"])


def test_a_fresh_run_refuses_a_checkpoint_uri_that_holds_a_run(s3_env, tmp_path):
    uri = f"s3://{BUCKET}/taken/ck"
    cfg = load_config(None, [f"output_dir={tmp_path}", f"train.checkpoint_uri={uri}"])
    _check_checkpoint_uri_is_new(cfg)  # empty: fine
    write_checkpoint(uri, 1, {"global_step": 1}, _rank_writer(0), keep=1)
    with pytest.raises(ConfigError, match=r"train\.checkpoint_uri: .* already holds checkpoints"):
        _check_checkpoint_uri_is_new(cfg)
    missing = load_config(None, [f"output_dir={tmp_path}", "train.checkpoint_uri=s3://no-bucket/x"])
    with pytest.raises(ConfigError, match=r"train\.checkpoint_uri: cannot read"):
        _check_checkpoint_uri_is_new(missing)


# -- Metrics ------------------------------------------------------------------------------------


def test_metrics_truncation_drops_later_steps_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"eval": "base", "step": 0}, {"step": 1}, {"step": 2}, {"step": 3}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 4, "lo')
    logger = MetricsLogger(tmp_path, resume_step=2)
    logger.log({"step": 3, "loss": 0.5}, 3)
    logger.close()
    kept = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["step"] for r in kept] == [0, 1, 2, 3]
    assert kept[-1]["loss"] == 0.5
    assert os.path.exists(path)
