"""Weight transports: the learner half and the rollout half of moving new weights.

The Learner (`send`) and each RolloutWorker (`receive`) import this module; the driver's
two calls that pair the halves up live in `score_ray.sync`, which imports the groups, so
this module imports no actor or group and nothing imports in a circle.

A transport (`sync.transport`, resolved by `choose_transport`) has a learner half and a
rollout half; the driver only moves the small `WeightHandle` between them:

    object_store  learner rank 0 serializes buckets of tensors into the Ray object store
                  (`send`); every rollout worker fetches them (zero-copy on its node) and
                  loads them through our vLLM worker extension (`receive`). CPU or GPU,
                  any cluster. `sync_weights` = send, then receive.
    nccl          learner rank 0 broadcasts buckets from its GPU to every vLLM worker
                  (all rollout actors, all tensor-parallel ranks) over one NCCL group. The
                  handle is metadata only (names, shapes, dtypes), so `sync_weights` first
                  asks rank 0 for it (no gathering), then runs the learner's send and the
                  rollouts' receive at once: a broadcast needs both sides.
    cuda_ipc      rollout actor i shares learner rank i's GPU: every rank exports its full
                  copy of each parameter as a CUDA IPC handle; vLLM maps them and copies.
                  `sync_weights` = send, receive, then `release` the exported copies.

Under ZeRO-3 the learner gathers one parameter at a time (`Learner.named_parameters_gathered`);
no rank ever holds the whole model at once except cuda_ipc's exported copy (see below).

The GPU transports use vLLM 0.32's weight-transfer API (vllm/distributed/weight_transfer,
vllm/entrypoints/rl/offline.py, vllm/v1/worker/gpu_worker.py). Call sequence:

  inference side, each RolloutWorker (a `vllm.LLM`):
    LLM(..., weight_transfer_config={"backend": "nccl" | "ipc"})
        each GPU worker builds its WeightTransferEngine after loading the model
    llm.init_weight_transfer_engine({"init_info": info})       once, via collective_rpc
        nccl: info = {master_address, master_port, rank_offset, world_size, packed=True,
              packed_buffer_size_bytes, packed_num_buffers}; each worker joins a
              StatelessProcessGroup + PyNcclCommunicator as rank rank_offset + tp_rank
              (data_parallel_index is 0: every LLM here is its own engine) and blocks
              until all world_size ranks have joined
        ipc:  info = {packed=False}
    per sync:
    llm.start_weight_update()                                   initialize_layerwise_reload
    llm.update_weights({"update_info": handle.payload})         engine.receive_weights ->
        model.load_weights (HF names). nccl: {names, dtype_names, shapes}, received with
        packed_nccl_broadcast_consumer, which cuts buckets from these and the buffer size;
        ipc: the same plus ipc_handles_pickled (needs VLLM_ALLOW_INSECURE_SERIALIZATION=1)
    llm.finish_weight_update()                                  finalize_layerwise_reload
    collective_rpc("score_ray_retie_word_embeddings")           ours: tied lm_head
  trainer side:
    nccl: rank 0 opens the group as NCCL rank 0 with nccl_common.trainer_init(
          {master_address, master_port, world_size}), concurrently with the workers' init;
          per sync packed_nccl_broadcast_producer(pairs, group, src=0, post_iter_func=
          lambda kv: kv[1], buffer_size_bytes, num_buffers), concurrently with the workers'
          update_weights. world_size = 1 + rollout.num_workers * tensor_parallel_size.
    ipc:  reduce_tensor(t)[1] per parameter, keyed by the GPU's UUID, all-gathered over
          the learner's process group and merged (each vLLM worker picks its own GPU's);
          the copies stay alive until the workers have finished loading.

We do not use vLLM's NCCLTrainerWeightTransferEngine / IPCTrainerWeightTransferEngine
themselves: they drive the inference side through a client from inside the trainer, and
the NCCL one sends every engine the same init info with rank_offset=1, right for one vLLM
deployment with data-parallel ranks, wrong for N independent engines (all would claim
rank 1). Here the driver orchestrates, each rollout worker gets its own rank_offset, and
the wire format is vLLM's own (its producer and consumer, the same buffer parameters).
"""

from __future__ import annotations

import base64
import io
import math
import pickle
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from score_ray.config import Config

MIB = 1024 * 1024
DEFAULT_BUCKET_BYTES = 64 * MIB
NCCL_NUM_BUFFERS = 2
"""Packed NCCL buffers in flight (vLLM's default); sender and receivers must agree."""


class StaleWeightsError(RuntimeError):
    """A weight update arrived out of order."""


class WeightSyncError(RuntimeError):
    """A GPU weight transport broke: a peer died, or did not answer within sync.timeout_s.

    Both sides may be stuck in a collective, so neither group can be reused: the trainer
    rebuilds them from the newest checkpoint. `role` names the side that failed."""

    def __init__(self, role: str, message: str) -> None:
        super().__init__(message)
        self.role = role


@dataclass
class WeightHandle:
    """What the driver passes from learner to rollout workers for one sync."""

    version: int
    transport: str
    payload: Any
    """object_store: ObjectRefs of serialized buckets. nccl: vLLM update info (names,
    dtype_names, shapes). cuda_ipc: the same plus `ipc_handles_pickled`."""
    num_bytes: int
    num_tensors: int


ParamSpec = tuple[str, list[int], torch.dtype]
"""(name, full shape, dtype on the wire) of one parameter."""


# -- Choosing a transport ------------------------------------------------------------


def choose_transport(cfg: Config) -> str:
    """The transport `sync.transport` resolves to for this layout (see SyncConfig)."""
    if cfg.sync.transport != "auto":
        return cfg.sync.transport
    if cfg.rollout.num_gpus == 0 or cfg.learner.num_gpus == 0:
        return "object_store"
    return "cuda_ipc" if cfg.rollout.colocate_with_learner else "nccl"


# -- Pure helpers (unit-tested) --------------------------------------------------------


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


_WRAPPER_PARTS = {"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"}


def vllm_weight_name(name: str) -> str:
    """The name vLLM's `load_weights` expects for a learner parameter.

    vLLM takes HF checkpoint names (it stacks q/k/v and gate/up itself, and skips
    `lm_head.weight` when embeddings are tied), so the only mapping is dropping what
    wrappers add to `named_parameters()`: DDP's leading `module.`, torch.compile's
    `_orig_mod`, FSDP and activation-checkpoint wrappers. A DeepSpeed engine's
    `.module` adds none, so for our learner this is the identity.
    """
    name = name.removeprefix("module.")
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_PARTS)


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16", the form vLLM's update info carries."""
    return str(dtype).removeprefix("torch.")


def update_info(specs: list[ParamSpec]) -> dict[str, list]:
    """vLLM's per-round update info (NCCLWeightTransferUpdateInfo fields) for `specs`."""
    return {
        "names": [name for name, _, _ in specs],
        "dtype_names": [dtype_name(dtype) for _, _, dtype in specs],
        "shapes": [list(shape) for _, shape, _ in specs],
    }


def spec_bytes(specs: list[ParamSpec]) -> int:
    return sum(math.prod(shape) * dtype.itemsize for _, shape, dtype in specs)


def check_specs(
    named_tensors: Iterable[tuple[str, torch.Tensor]], specs: list[ParamSpec]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Pass the tensors through, failing at the first that differs from what the
    receivers were told (name, shape, dtype, count): they cut the broadcast stream from
    the specs, so a mismatch would hang in NCCL or load garbage."""
    count = 0
    for name, tensor in named_tensors:
        if count >= len(specs):
            raise ValueError(f"weight sync: {name!r} is beyond the {len(specs)} announced")
        want_name, want_shape, want_dtype = specs[count]
        got = (name, list(tensor.shape), tensor.dtype)
        if got != (want_name, list(want_shape), want_dtype):
            raise ValueError(
                f"weight sync: tensor {count} is {got}, announced "
                f"{(want_name, list(want_shape), want_dtype)}"
            )
        count += 1
        yield name, tensor
    if count != len(specs):
        raise ValueError(f"weight sync: sent {count} tensors, announced {len(specs)}")


def nccl_init_infos(
    address: str, port: int, num_workers: int, tensor_parallel_size: int, bucket_bytes: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Init info for learner rank 0 (NCCL rank 0) and for each rollout worker, whose
    tensor-parallel ranks take the NCCL ranks after the workers before it."""
    world_size = 1 + num_workers * tensor_parallel_size
    trainer = {"master_address": address, "master_port": port, "world_size": world_size}
    wire = {
        "packed": True,
        "packed_buffer_size_bytes": bucket_bytes,
        "packed_num_buffers": NCCL_NUM_BUFFERS,
    }
    workers = [
        {**trainer, **wire, "rank_offset": 1 + index * tensor_parallel_size}
        for index in range(num_workers)
    ]
    return trainer, workers


def merge_ipc_handles(per_rank: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One {gpu_uuid: rebuild args} dict per parameter, merged over learner ranks, so
    each vLLM worker finds the copy on its own GPU."""
    merged: list[dict[str, Any]] = [{} for _ in per_rank[0]]
    for handles in per_rank:
        if len(handles) != len(merged):
            raise ValueError("learner ranks exported different numbers of parameters")
        for into, handle in zip(merged, handles, strict=True):
            into.update(handle)
    return merged


def pickle_ipc_handles(handles: list[dict[str, Any]]) -> str:
    """As vLLM's HTTP client sends them: raw handles do not survive vLLM's msgpack RPC."""
    return base64.b64encode(pickle.dumps(handles)).decode("ascii")


def run_concurrently(
    *calls: Callable[[], Any],
    timeout_s: float | None = None,
    roles: Sequence[str] = (),
    what: str = "weight sync",
) -> list[Any]:
    """Run the calls in threads and return their results in order. If one raises, raise
    at once without waiting for the others: a broadcast whose peer failed never returns
    (the threads are daemons, so they do not keep the process alive).

    With `timeout_s`, calls still running after that long raise `WeightSyncError` naming
    their `roles` (one per call): a peer that stopped answering must not hang the run."""
    results: queue.Queue = queue.Queue()

    def run(index: int, call: Callable[[], Any]) -> None:
        try:
            results.put((index, True, call()))
        except BaseException as err:
            results.put((index, False, err))

    for index, call in enumerate(calls):
        threading.Thread(target=run, args=(index, call), daemon=True).start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    out: list[Any] = [None] * len(calls)
    pending = set(range(len(calls)))
    while pending:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            index, ok, value = results.get(timeout=wait)
        except queue.Empty:
            names = [roles[i] if i < len(roles) else f"call {i}" for i in sorted(pending)]
            role = " and ".join(names)
            raise WeightSyncError(
                role,
                f"{what}: no answer from {role} within sync.timeout_s="
                f"{timeout_s:g} s (a peer died or hangs in a collective)",
            ) from None
        if not ok:
            raise value
        out[index] = value
        pending.discard(index)
    return out


def sync_deadline(cfg: Config) -> float | None:
    """sync.timeout_s for the GPU transports; None (wait as long as it takes) for object_store,
    whose dead peers Ray reports and whose slow steps (starting a replacement worker) are
    no failure."""
    return None if choose_transport(cfg) == "object_store" else cfg.sync.timeout_s


# -- Transports: a learner half and a rollout half ----------------------------------------


class WeightTransport:
    """Base: `send` runs on the learner (rank 0; every rank for cuda_ipc), `receive` in
    each RolloutWorker with its `vllm.LLM`. The rest is set-up and clean-up."""

    name = ""

    def __init__(self, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        self.bucket_bytes = bucket_bytes

    def connect_sender(self, init_info: dict[str, Any]) -> None:
        """Learner rank 0, once: join the transfer group (nccl)."""

    def connect_receiver(self, llm: Any, init_info: dict[str, Any]) -> None:
        """Each RolloutWorker, once, concurrently with `connect_sender`."""

    def send(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int
    ) -> WeightHandle | None:
        raise NotImplementedError

    def receive(self, llm: Any, handle: WeightHandle) -> int:
        """Load the weights of `handle` into `llm`; returns the number of tensors loaded."""
        raise NotImplementedError

    def release(self) -> None:
        """Learner, after every rollout worker has loaded: drop what `send` kept."""


class ObjectStoreTransport(WeightTransport):
    """Through the Ray object store (works on any Ray cluster, CPU or GPU)."""

    name = "object_store"

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> WeightHandle:
        import ray

        refs, num_bytes, num_tensors = [], 0, 0
        for bucket in bucket_named_tensors(named_tensors, self.bucket_bytes):
            payload = serialize_bucket(bucket)
            refs.append(ray.put(payload))
            num_bytes += len(payload)
            num_tensors += len(bucket)
        return WeightHandle(version, self.name, refs, num_bytes, num_tensors)

    def receive(self, llm: Any, handle: WeightHandle) -> int:
        import ray

        buckets = list(ray.get(handle.payload))
        loaded = llm.collective_rpc("score_ray_load_weights", args=(buckets,))
        return min(loaded, default=0)


def _receive_with_vllm_engine(llm: Any, handle: WeightHandle) -> int:
    """Rollout half of both GPU transports: vLLM's own start / update / finish."""
    llm.start_weight_update()
    llm.update_weights({"update_info": handle.payload})
    llm.finish_weight_update()
    llm.collective_rpc("score_ray_retie_word_embeddings")
    return len(handle.payload["names"])


class NcclTransport(WeightTransport):
    """Learner rank 0 broadcasts packed buckets to every vLLM worker (any nodes)."""

    name = "nccl"

    def __init__(self, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        super().__init__(bucket_bytes)
        self.group: Any = None  # PyNcclCommunicator on learner rank 0

    def connect_sender(self, init_info: dict[str, Any]) -> None:
        from vllm.distributed.weight_transfer.nccl_common import trainer_init

        self.group = trainer_init(init_info)

    def connect_receiver(self, llm: Any, init_info: dict[str, Any]) -> None:
        llm.init_weight_transfer_engine({"init_info": init_info})

    def send(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> WeightHandle:
        from vllm.distributed.weight_transfer.packed_tensor import packed_nccl_broadcast_producer

        if self.group is None:
            raise RuntimeError("nccl weight transport used before connect_weight_transport")
        counted = {"bytes": 0, "tensors": 0}

        def counting() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in named_tensors:
                counted["bytes"] += tensor.numel() * tensor.element_size()
                counted["tensors"] += 1
                yield name, tensor

        packed_nccl_broadcast_producer(
            iterator=counting(),
            group=self.group,
            src=0,
            post_iter_func=lambda item: item[1],
            buffer_size_bytes=self.bucket_bytes,
            num_buffers=NCCL_NUM_BUFFERS,
        )
        torch.cuda.current_stream().synchronize()
        return WeightHandle(version, self.name, None, counted["bytes"], counted["tensors"])

    def receive(self, llm: Any, handle: WeightHandle) -> int:
        return _receive_with_vllm_engine(llm, handle)


class CudaIpcTransport(WeightTransport):
    """Colocated: each learner rank exports its GPU copies; vLLM on that GPU maps them.

    Unpacked (vLLM's IPC default): every parameter, in the rollout dtype, stays exported
    until `release`, i.e. one extra model copy per GPU during the sync. vLLM's packed IPC
    mode bounds that to one buffer but needs a round trip per bucket with the consumer."""

    name = "cuda_ipc"

    def __init__(self, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        super().__init__(bucket_bytes)
        self.exported: list[torch.Tensor] = []

    def connect_receiver(self, llm: Any, init_info: dict[str, Any]) -> None:
        llm.init_weight_transfer_engine({"init_info": init_info})

    def send(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int
    ) -> WeightHandle | None:
        """Every learner rank (the handle exchange is a collective); rank 0 returns."""
        import torch.distributed as dist
        from torch.multiprocessing.reductions import reduce_tensor

        gpu = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
        specs: list[ParamSpec] = []
        handles: list[dict[str, Any]] = []
        for name, tensor in named_tensors:
            tensor = tensor.detach().contiguous()
            self.exported.append(tensor)  # reduce_tensor's args do not keep it alive
            specs.append((name, list(tensor.shape), tensor.dtype))
            handles.append({gpu: reduce_tensor(tensor)[1]})
        torch.cuda.current_stream().synchronize()  # copies done before anyone maps them
        per_rank = [handles]
        if dist.is_initialized() and dist.get_world_size() > 1:
            per_rank = [None] * dist.get_world_size()
            dist.all_gather_object(per_rank, handles)
            if dist.get_rank() != 0:
                return None
        payload = {
            **update_info(specs),
            "ipc_handles_pickled": pickle_ipc_handles(merge_ipc_handles(per_rank)),
        }
        return WeightHandle(version, self.name, payload, spec_bytes(specs), len(specs))

    def receive(self, llm: Any, handle: WeightHandle) -> int:
        return _receive_with_vllm_engine(llm, handle)

    def release(self) -> None:
        self.exported.clear()
        torch.cuda.ipc_collect()


TRANSPORTS: dict[str, type[WeightTransport]] = {
    cls.name: cls for cls in (ObjectStoreTransport, NcclTransport, CudaIpcTransport)
}


def make_transport(name: str, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> WeightTransport:
    if name not in TRANSPORTS:
        raise ValueError(f"unknown weight transport {name!r}; known: {sorted(TRANSPORTS)}")
    return TRANSPORTS[name](bucket_bytes)
