"""Shared fixtures for integration tests: a real local Ray and the tiny real model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from score_ray.config import Config, load_config

CONF = Path(__file__).resolve().parents[2] / "conf"


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray instance for the in-process integration tests."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=4, include_dashboard=False)  # never a stray instance
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    from score_ray.models import build_tiny_model

    return build_tiny_model(Config().model.cache_dir)


def tiny_config(tmp_path: Path, *overrides: str) -> Config:
    return load_config(CONF / "tiny.yaml", [f"output_dir={tmp_path}", *overrides])


def max_abs_diff(a: list[list[float]], b: list[list[float]]) -> float:
    """Largest elementwise |a - b| over two equally shaped lists of log-prob rows."""
    return max(
        abs(x - y)
        for row_a, row_b in zip(a, b, strict=True)
        for x, y in zip(row_a, row_b, strict=True)
    )
