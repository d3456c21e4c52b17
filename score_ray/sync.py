"""Weight sync: how a learner's new weights reach every RolloutWorker.

A transport has two halves, used by two different actors:

    handle = transport.send(named_tensors, version)     # learner rank 0
    for name, tensor in transport.receive(handle): ...  # each RolloutWorker

The driver only moves the (small) handle between them, so a transport can be
swapped (object store on CPU, NCCL broadcast or CUDA IPC on GPUs) without
touching the training loop. The CPU transport below packs the weights into
buckets of serialized tensors, puts each bucket in the Ray object store once,
and lets every rollout worker fetch them (zero-copy on the same node).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

DEFAULT_BUCKET_BYTES = 64 * 1024 * 1024


@dataclass
class WeightHandle:
    """What the driver passes from learner to rollout workers for one sync."""

    version: int
    transport: str
    payload: Any
    """Transport-specific: for object_store, a list of ObjectRefs of serialized buckets."""
    num_bytes: int
    num_tensors: int


class WeightTransport(Protocol):
    name: str

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> WeightHandle:
        """Learner side: publish a full set of weights tagged with `version`."""

    def receive(self, handle: WeightHandle) -> list[bytes]:
        """Rollout side: fetch the published weights as serialized buckets."""


def bucket_named_tensors(
    named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group tensors into buckets of at most `bucket_bytes` (a larger tensor is its
    own bucket), so no single message holds the whole model."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named_tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def serialize_bucket(bucket: list[tuple[str, torch.Tensor]]) -> bytes:
    buffer = io.BytesIO()
    torch.save({name: tensor.detach().contiguous().cpu() for name, tensor in bucket}, buffer)
    return buffer.getvalue()


def deserialize_bucket(payload: bytes) -> list[tuple[str, torch.Tensor]]:
    state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    return list(state.items())


class ObjectStoreTransport:
    """CPU transport through the Ray object store (works on any Ray cluster)."""

    name = "object_store"

    def __init__(self, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        self.bucket_bytes = bucket_bytes

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> WeightHandle:
        import ray

        refs, num_bytes, num_tensors = [], 0, 0
        for bucket in bucket_named_tensors(named_tensors, self.bucket_bytes):
            payload = serialize_bucket(bucket)
            refs.append(ray.put(payload))
            num_bytes += len(payload)
            num_tensors += len(bucket)
        return WeightHandle(version, self.name, refs, num_bytes, num_tensors)

    def receive(self, handle: WeightHandle) -> list[bytes]:
        import ray

        return list(ray.get(handle.payload))


TRANSPORTS = {ObjectStoreTransport.name: ObjectStoreTransport}


def make_transport(name: str) -> WeightTransport:
    if name not in TRANSPORTS:
        raise ValueError(f"unknown weight transport {name!r}; known: {sorted(TRANSPORTS)}")
    return TRANSPORTS[name]()
