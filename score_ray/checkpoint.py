"""Checkpoints: learner state plus driver state, committed so that a crash never leaves a
torn checkpoint in use; in a folder, or on object storage.

The root (`checkpoint_location`) is OUTPUT_DIR/checkpoints/, or `train.checkpoint_uri`
(s3://bucket/prefix, gs://bucket/prefix, file:///path), reached through pyarrow.fs:

    step_000004/
        learner/            DeepSpeed checkpoint (model, optimizer, scheduler; every rank's part)
        driver_state.json   stage, step, weight version, data position, RNG states
    latest                  name of the newest complete checkpoint
    final/                  URI only: the trained HF folder, on its way to OUTPUT_DIR/final

Commit protocol (the driver is the only writer of a root):

- A folder: the learner ranks write into `.tmp-step_N/learner/` (so every learner node
  must see the folder), the driver adds driver_state.json, renames the folder to `step_N/`
  and replaces `latest` atomically. A crash leaves a `.tmp-*` folder, ignored and removed
  by the next write.
- A URI: object stores cannot rename a folder. Each rank writes its part on its own node
  (a temporary folder under TMPDIR, `staged_write`) and uploads it to `step_N/learner/`.
  Only when every rank's upload has returned does the driver write
  `step_N/driver_state.json`, the step's completion marker, and then `latest` (one object
  PUT, which object stores apply whole or not at all). A step folder without the marker is
  ignored and removed by the next write.

Reading trusts `latest` when it names a complete step, else takes the newest complete one.
A rank restoring from a URI first downloads `step_N/learner/` to its own node
(`staged_read`), so the nodes need no shared disk.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from score_ray.uris import uri_scheme

if TYPE_CHECKING:
    import pyarrow.fs

    from score_ray.config import Config

DRIVER_STATE = "driver_state.json"
LATEST = "latest"
LEARNER = "learner"
FINAL = "final"
FINAL_ADAPTER = "final_adapter"  # learner.lora: the adapter alone, next to the merged final/
STAGE1_POLICY = "stage1"  # train.stage2_method=star: the Stage I policy STaR starts from
STAGING_PREFIX = "score-ray-ckpt-"
"""Temporary folders under a node's TMPDIR that hold a rank's part on its way up or down."""


# -- Locations: a local path or a URI ---------------------------------------------------------


def checkpoint_location(cfg: Config) -> str:
    """The run's checkpoint root: train.checkpoint_uri, else OUTPUT_DIR/checkpoints."""
    if cfg.train.checkpoint_uri:
        return cfg.train.checkpoint_uri.rstrip("/")
    return str(checkpoint_root(cfg.output_dir))


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    """The default root, a folder in the run's output directory."""
    return Path(output_dir) / "checkpoints"


def join(location: str | os.PathLike, *names: str) -> str:
    """`location`/names..., for a URI and a path alike (pathlib would fold "s3://" to "s3:/")."""
    return "/".join([str(location).rstrip("/"), *names])


def learner_dir(checkpoint: str | os.PathLike) -> str:
    """Where the learner ranks' DeepSpeed parts of `checkpoint` are."""
    return join(checkpoint, LEARNER)


def _filesystem(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    import pyarrow.fs

    if uri_scheme(location) is not None:
        return pyarrow.fs.FileSystem.from_uri(location)
    return pyarrow.fs.LocalFileSystem(), os.path.abspath(location)


def _exists(fs: pyarrow.fs.FileSystem, path: str, kind: str = "any") -> bool:
    import pyarrow.fs

    found = fs.get_file_info(path).type
    if kind == "file":
        return found == pyarrow.fs.FileType.File
    if kind == "dir":
        return found == pyarrow.fs.FileType.Directory
    return found != pyarrow.fs.FileType.NotFound


def copy_tree(source: str, destination: str) -> None:
    """Copy a folder (recursively), between a local path and a URI in either direction."""
    import pyarrow.fs

    fs, path = _filesystem(source)
    if not _exists(fs, path, "dir"):
        raise FileNotFoundError(f"no checkpoint folder at {source}")
    to_fs, to_path = _filesystem(destination)
    if isinstance(to_fs, pyarrow.fs.LocalFileSystem):  # object stores need no parent folders
        to_fs.create_dir(to_path, recursive=True)
    pyarrow.fs.copy_files(source, destination)


# -- A checkpoint root -------------------------------------------------------------------------


class _Root:
    """The few operations of the commit protocol, on a local folder or an object store."""

    def __init__(self, location: str | os.PathLike) -> None:
        self.location = str(location).rstrip("/")
        self.is_uri = uri_scheme(self.location) is not None
        self.fs, self.path = _filesystem(self.location)

    def child(self, *names: str) -> str:
        return join(self.location, *names)

    def _path(self, *names: str) -> str:
        return join(self.path, *names)

    def has_file(self, *names: str) -> bool:
        return _exists(self.fs, self._path(*names), "file")

    def read_text(self, *names: str) -> str:
        with self.fs.open_input_stream(self._path(*names)) as stream:
            return stream.read().decode()

    def write_text(self, text: str, *names: str) -> None:
        """Whole or not at all: an object PUT is; a local file goes through a renamed temp."""
        if self.is_uri:
            with self.fs.open_output_stream(self._path(*names)) as out:
                out.write(text.encode())
            return
        path = Path(self._path(*names))
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def folders(self) -> list[str]:
        """Names of the folders directly under the root, sorted (none if it does not exist)."""
        import pyarrow.fs

        selector = pyarrow.fs.FileSelector(self.path, allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        return sorted(i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory)

    def step_names(self) -> list[str]:
        return [name for name in self.folders() if name.startswith("step_")]

    def is_complete(self, name: str) -> bool:
        return self.has_file(name, DRIVER_STATE)

    def remove(self, name: str) -> None:
        if _exists(self.fs, self._path(name)):
            self.fs.delete_dir(self._path(name))

    def make_folder(self, name: str) -> None:
        """Local only: object stores have no folders to create."""
        if not self.is_uri:
            Path(self._path(name)).mkdir(parents=True)

    def rename(self, source: str, destination: str) -> None:
        """Local only: the atomic rename that commits a checkpoint folder."""
        os.rename(self._path(source), self._path(destination))
        _fsync_dir(Path(self.path))


# -- The driver's side -------------------------------------------------------------------------


def write_checkpoint(
    root_location: str | os.PathLike,
    step: int,
    driver_state: dict[str, Any],
    write_learner: Callable[[str], None],
    keep: int,
) -> str:
    """Write step `step`'s checkpoint under the root and commit it; keep the newest `keep`.

    `write_learner(location)` has every learner rank write (or upload) its part there and
    returns only when all have. Returns the checkpoint's location."""
    root = _Root(root_location)
    name = f"step_{step:06d}"
    # A folder is renamed into place; a URI is written in place and counts as a checkpoint
    # only once its driver state, written last, is there.
    staging = name if root.is_uri else f".tmp-{name}"
    root.remove(staging)  # a torn earlier attempt at this step
    root.make_folder(staging)
    write_learner(root.child(staging, LEARNER))
    root.write_text(json.dumps(driver_state), staging, DRIVER_STATE)
    if not root.is_uri:
        root.remove(name)
        root.rename(staging, name)
    root.write_text(name, LATEST)
    _prune(root, keep)
    return root.child(name)


def check_reachable(uri: str) -> None:
    """Raise unless the bucket of `uri` exists and can be listed (a file:// folder is made
    when first written). pyarrow raises OSError for an unreachable store or a refusal."""
    root = _Root(uri)
    bucket = root.path.split("/", 1)[0]
    if root.is_uri and uri_scheme(uri) != "file" and not _exists(root.fs, bucket, "dir"):
        raise FileNotFoundError(f"bucket {bucket!r} not found")
    root.folders()


def latest_checkpoint(root_location: str | os.PathLike) -> str | None:
    """The newest complete checkpoint under the root, or None. Trusts `latest`, else scans."""
    root = _Root(root_location)
    if root.has_file(LATEST):
        name = root.read_text(LATEST).strip()
        if name.startswith("step_") and root.is_complete(name):
            return root.child(name)
    complete = [name for name in root.step_names() if root.is_complete(name)]
    return root.child(complete[-1]) if complete else None


def read_driver_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    fs, path = _filesystem(join(checkpoint, DRIVER_STATE))
    with fs.open_input_stream(path) as stream:
        return json.loads(stream.read().decode())


def write_final(cfg: Config, write: Callable[[str], None], name: str = FINAL) -> Path:
    """Have the learner write the trained HF folder to OUTPUT_DIR/final (`write(location)`;
    `name`: another folder, e.g. FINAL_ADAPTER).

    With train.checkpoint_uri the learner, maybe on a node that does not share the driver's
    disk, uploads it to CHECKPOINT_URI/final, and the driver downloads it from there."""
    local = Path(cfg.output_dir) / name
    if not cfg.train.checkpoint_uri:
        write(str(local))
        return local
    root = _Root(checkpoint_location(cfg))
    root.remove(name)  # files of an earlier attempt would mix with the new ones
    write(root.child(name))
    shutil.rmtree(local, ignore_errors=True)
    copy_tree(root.child(name), str(local))
    return local


def _prune(root: _Root, keep: int) -> None:
    """Drop torn attempts (.tmp-* folders, step folders without driver state) and all but
    the newest `keep` complete checkpoints. Run after a commit: nothing is being written."""
    for name in root.folders():
        if name.startswith(".tmp-") or (name.startswith("step_") and not root.is_complete(name)):
            root.remove(name)
    for name in root.step_names()[:-keep] if keep > 0 else []:
        root.remove(name)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- A learner rank's side ---------------------------------------------------------------------


@contextmanager
def staged_write(target: str) -> Iterator[str]:
    """A local folder for this rank to write its part of `target` into.

    A path is used as it is (a folder all ranks see). For a URI it is a fresh folder on this
    node, uploaded to `target` when the block succeeds, removed either way: a rank that fails
    uploads nothing, and the driver then commits nothing."""
    if uri_scheme(target) is None:
        yield target
        return
    local = tempfile.mkdtemp(prefix=STAGING_PREFIX)
    try:
        yield local
        copy_tree(local, target)
    finally:
        shutil.rmtree(local, ignore_errors=True)


@contextmanager
def staged_read(source: str) -> Iterator[str]:
    """A local folder holding `source`: the path itself, or for a URI a download of it on
    this node, removed after the block."""
    if uri_scheme(source) is None:
        yield source
        return
    local = tempfile.mkdtemp(prefix=STAGING_PREFIX)
    try:
        copy_tree(source, local)
        yield local
    finally:
        shutil.rmtree(local, ignore_errors=True)
