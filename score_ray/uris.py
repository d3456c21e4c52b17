"""Checkpoint roots given as URIs (s3://, gs://, file://): parsing and validation, shared by the
config's validation and `score_ray.checkpoint` (which the config must not import)."""

from __future__ import annotations

import os

URI_SCHEMES = ("s3", "gs", "file")


def uri_scheme(location: str | os.PathLike) -> str | None:
    """The scheme of a URI ("s3" for "s3://bucket/key"); None for a plain path."""
    scheme, sep, _ = str(location).partition("://")
    return scheme.lower() if sep else None


def checkpoint_uri_problem(uri: str) -> str | None:
    """Why `uri` cannot be a checkpoint root (None: it can)."""
    scheme = uri_scheme(uri)
    schemes = [f"{name}://" for name in URI_SCHEMES]
    if scheme not in URI_SCHEMES:
        return f"must be a URI starting with one of {schemes}, got {uri!r}"
    rest = uri.partition("://")[2]
    if not rest.strip("/"):
        return f"names no bucket or folder: {uri!r}"
    if scheme == "file" and not rest.startswith("/"):
        return f"a file:// URI needs an absolute path (file:///abs/path), got {uri!r}"
    return None
