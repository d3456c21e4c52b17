"""The unit of work every task source produces and every verifier scores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    uid: str
    """Stable id (source name + index or content hash); used for dedup and splits."""
    question: str
    """Task text shown to the model, substituted into prompts.attempt1's {question}."""
    answer: str
    """Reference answer as a string."""
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    """JSON-serialisable extras the scorer needs (e.g. the reasoning-gym entry)."""
