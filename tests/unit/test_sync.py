"""Weight sync without a GPU: bucketing, serialization, the transport choice and its config
checks, vLLM's update/init info as vLLM itself parses it, and the driver's orchestration
(`sync_weights`, `connect_weight_transport`) against fake groups."""

from __future__ import annotations

import dataclasses
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from score_ray.config import Config, ConfigError, load_config
from score_ray.rollout.vllm_extension import _retie_word_embeddings
from score_ray.rollout.worker import engine_kwargs, rollout_env
from score_ray.sync import connect_weight_transport, sync_weights
from score_ray.transport import (
    StaleWeightsError,
    WeightHandle,
    bucket_named_tensors,
    check_specs,
    choose_transport,
    deserialize_bucket,
    merge_ipc_handles,
    nccl_init_infos,
    pickle_ipc_handles,
    run_concurrently,
    serialize_bucket,
    spec_bytes,
    update_info,
    vllm_weight_name,
)

GPU = ["rollout.num_gpus=1", "learner.num_gpus=1"]
COLOCATED = ["rollout.num_gpus=0.5", "learner.num_gpus=0.5", "rollout.colocate_with_learner=true"]


def _named(*sizes: int) -> list[tuple[str, torch.Tensor]]:
    """float32 tensors of the given element counts (4 bytes each), named t0, t1, ..."""
    return [(f"t{i}", torch.full((n,), float(i))) for i, n in enumerate(sizes)]


# -- Bucketing and serialization -----------------------------------------------------------


def test_buckets_respect_the_size_and_keep_order():
    tensors = _named(4, 4, 4, 2, 8)  # 16, 16, 16, 8, 32 bytes
    buckets = list(bucket_named_tensors(tensors, bucket_bytes=32))
    assert [[name for name, _ in b] for b in buckets] == [["t0", "t1"], ["t2", "t3"], ["t4"]]
    assert all(sum(t.numel() * 4 for _, t in b) <= 32 for b in buckets)
    assert [name for b in buckets for name, _ in b] == [name for name, _ in tensors]


def test_a_tensor_larger_than_the_bucket_is_its_own_bucket():
    buckets = list(bucket_named_tensors(_named(1, 100, 1), bucket_bytes=8))
    assert [[name for name, _ in b] for b in buckets] == [["t0"], ["t1"], ["t2"]]
    assert list(bucket_named_tensors([], bucket_bytes=8)) == []


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_serialize_round_trip_keeps_names_dtypes_and_values(dtype):
    base = torch.randn(6, 4).to(dtype)
    bucket = [("model.embed_tokens.weight", base), ("lm.t", base.t())]  # non-contiguous view
    restored = deserialize_bucket(serialize_bucket(bucket))
    assert [name for name, _ in restored] == ["model.embed_tokens.weight", "lm.t"]
    for (_, want), (_, got) in zip(bucket, restored, strict=True):
        assert got.dtype == dtype and got.shape == want.shape
        assert torch.equal(got, want)


# -- Choosing a transport, config checks -------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], "object_store"),  # CPU everywhere
        (["rollout.num_gpus=1"], "object_store"),  # learner on CPU
        (["learner.num_gpus=1"], "object_store"),  # rollout on CPU
        (GPU, "nccl"),
        ([*GPU, "rollout.num_workers=2", "rollout.tensor_parallel_size=2"], "nccl"),
        (COLOCATED, "cuda_ipc"),
        ([*GPU, "sync.transport=object_store"], "object_store"),
        ([*COLOCATED, "sync.transport=object_store"], "object_store"),
        ([*GPU, "sync.transport=nccl"], "nccl"),
        ([*COLOCATED, "sync.transport=cuda_ipc"], "cuda_ipc"),
    ],
)
def test_choose_transport(overrides, expected):
    assert choose_transport(load_config(None, overrides)) == expected


@pytest.mark.parametrize(
    ("overrides", "key", "why"),
    [
        (["sync.transport=nccl"], "sync.transport", "needs GPUs"),
        (["sync.transport=cuda_ipc"], "sync.transport", "needs GPUs"),
        (["sync.transport=nccl", "rollout.num_gpus=1"], "sync.transport", "needs GPUs"),
        ([*GPU, "sync.transport=cuda_ipc"], "sync.transport", "colocate_with_learner=true"),
        ([*COLOCATED, "sync.transport=nccl"], "sync.transport", "two ranks on one GPU"),
        (["sync.transport=gloo"], "sync.transport", "must be one of"),
        (["sync.bucket_mb=0"], "sync.bucket_mb", ">= 1"),
        (["rollout.colocate_with_learner=true"], "rollout.colocate_with_learner", "GPU only"),
        ([*COLOCATED, "rollout.num_workers=2"], "rollout.colocate_with_learner", "world_size"),
        (
            [*COLOCATED, "rollout.tensor_parallel_size=2"],
            "rollout.colocate_with_learner",
            "tensor_parallel_size=1",
        ),
        (
            ["rollout.num_gpus=1", "learner.num_gpus=0.5", "rollout.colocate_with_learner=true"],
            "rollout.colocate_with_learner",
            "<= 1",
        ),
    ],
)
def test_invalid_sync_layouts_are_rejected_naming_the_key(overrides, key, why):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    line = next(line for line in str(err.value).splitlines() if key + ":" in line)
    assert why in line


def test_valid_gpu_layouts_load():
    load_config(None, [*GPU, "sync.transport=nccl", "sync.bucket_mb=256"])
    cfg = load_config(None, [*COLOCATED, "rollout.num_workers=2", "learner.world_size=2"])
    assert cfg.rollout.colocate_with_learner


# -- What the rollout engine is built with ---------------------------------------------------


def test_engine_kwargs_are_vllm_engine_args_and_pick_the_backend():
    from vllm.config.weight_transfer import WeightTransferConfig
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory
    from vllm.engine.arg_utils import EngineArgs

    known = {f.name for f in dataclasses.fields(EngineArgs)}
    cpu = engine_kwargs(load_config(None, []), "m", 0)
    assert "weight_transfer_config" not in cpu and "enable_sleep_mode" not in cpu
    nccl = engine_kwargs(load_config(None, GPU), "m", 1)
    ipc = engine_kwargs(load_config(None, COLOCATED), "m", 0)
    assert nccl["weight_transfer_config"] == {"backend": "nccl"} and nccl["seed"] == 1
    assert ipc["weight_transfer_config"] == {"backend": "ipc"} and ipc["enable_sleep_mode"]
    for kwargs in (cpu, nccl, ipc):
        assert set(kwargs) <= known
    for kwargs in (nccl, ipc):
        backend = WeightTransferConfig(**kwargs["weight_transfer_config"]).backend
        assert backend in WeightTransferEngineFactory._registry


def test_tensor_parallel_engine_uses_multiprocessing_not_the_actors_placement_group(
    monkeypatch,
):
    """Inside our rollout actor (in a placement group) vLLM would pick its Ray executor for
    tp > 1, which rejects a bundle holding more than one GPU; "mp" keeps the tp workers in
    the actor, on the GPUs Ray gave it."""
    import ray
    import ray.util
    from vllm.config import ParallelConfig
    from vllm.engine.arg_utils import EngineArgs

    tp2 = load_config(None, [*GPU, "rollout.tensor_parallel_size=2"])
    kwargs = engine_kwargs(tp2, "m", 0)
    assert kwargs["distributed_executor_backend"] == "mp"
    assert {"distributed_executor_backend"} <= {f.name for f in dataclasses.fields(EngineArgs)}
    for overrides in ([], GPU):  # one rank: vLLM's own choice ("uni") is right
        assert "distributed_executor_backend" not in engine_kwargs(
            load_config(None, overrides), "m", 0
        )
    # What vLLM 0.32 decides in a Ray actor that sits in a placement group:
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray.util, "get_current_placement_group", lambda: object())
    assert ParallelConfig(tensor_parallel_size=2).distributed_executor_backend == "ray"
    ours = ParallelConfig(tensor_parallel_size=2, distributed_executor_backend="mp")
    assert ours.distributed_executor_backend == "mp"


def test_ipc_rollout_may_unpickle_handles_and_others_not():
    assert rollout_env(load_config(None, COLOCATED))["VLLM_ALLOW_INSECURE_SERIALIZATION"] == "1"
    for overrides in ([], GPU):
        assert "VLLM_ALLOW_INSECURE_SERIALIZATION" not in rollout_env(load_config(None, overrides))


# -- Names, specs and vLLM's own info classes ---------------------------------------------------


def test_hf_names_reach_vllm_unchanged_and_wrappers_are_dropped():
    llama = [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.mlp.gate_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ]
    assert [vllm_weight_name(n) for n in llama] == llama
    assert vllm_weight_name("module.model.norm.weight") == "model.norm.weight"
    assert vllm_weight_name("_orig_mod.model.norm.weight") == "model.norm.weight"
    assert (
        vllm_weight_name("model.layers.1._checkpoint_wrapped_module.mlp.up_proj.weight")
        == "model.layers.1.mlp.up_proj.weight"
    )
    assert vllm_weight_name("model.module.weight") == "model.module.weight"  # only a prefix


def test_update_info_is_what_vllm_parses():
    from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferUpdateInfo

    specs = [("a", [2, 3], torch.bfloat16), ("b", [5], torch.float32), ("c", [], torch.float16)]
    info = update_info(specs)
    assert info == {
        "names": ["a", "b", "c"],
        "dtype_names": ["bfloat16", "float32", "float16"],
        "shapes": [[2, 3], [5], []],
    }
    parsed = NCCLWeightTransferUpdateInfo(**info)
    # The receiver rebuilds dtypes exactly like this (nccl_engine.receive_weights).
    assert [getattr(torch, n) for n in parsed.dtype_names] == [d for _, _, d in specs]
    assert spec_bytes(specs) == 6 * 2 + 5 * 4 + 1 * 2


def test_check_specs_passes_matching_tensors_and_names_the_first_mismatch():
    tensors = [("a", torch.zeros(2, 3, dtype=torch.bfloat16)), ("b", torch.zeros(4))]
    specs = [("a", [2, 3], torch.bfloat16), ("b", [4], torch.float32)]
    assert [n for n, _ in check_specs(iter(tensors), specs)] == ["a", "b"]
    with pytest.raises(ValueError, match="tensor 1"):
        list(check_specs(iter(tensors), [specs[0], ("b", [5], torch.float32)]))
    with pytest.raises(ValueError, match="tensor 0"):
        list(check_specs(iter(tensors), [("a", [2, 3], torch.float32), specs[1]]))
    with pytest.raises(ValueError, match="announced 3"):
        list(check_specs(iter(tensors), [*specs, ("c", [1], torch.float32)]))
    with pytest.raises(ValueError, match="beyond the 1 announced"):
        list(check_specs(iter(tensors), specs[:1]))


def test_nccl_ranks_are_distinct_across_workers_and_tensor_parallel_ranks():
    from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferInitInfo

    trainer, workers = nccl_init_infos("10.0.0.1", 29500, 3, 2, bucket_bytes=64 << 20)
    assert trainer == {"master_address": "10.0.0.1", "master_port": 29500, "world_size": 7}
    ranks = [w["rank_offset"] + tp for w in workers for tp in range(2)]
    assert ranks == [1, 2, 3, 4, 5, 6]  # rank 0 is the learner
    for info in workers:
        parsed = NCCLWeightTransferInitInfo(**info)  # vLLM's own validation, no connection
        assert parsed.world_size == 7 and parsed.packed
        assert parsed.packed_buffer_size_bytes == 64 << 20


def test_ipc_handles_merge_per_gpu_and_survive_vllms_decoding(monkeypatch):
    from vllm.distributed.weight_transfer.ipc_engine import IPCWeightTransferUpdateInfo

    rank0 = [{"GPU-0": ("args", 0, "a")}, {"GPU-0": ("args", 0, "b")}]
    rank1 = [{"GPU-1": ("args", 1, "a")}, {"GPU-1": ("args", 1, "b")}]
    merged = merge_ipc_handles([rank0, rank1])
    assert merged == [
        {"GPU-0": ("args", 0, "a"), "GPU-1": ("args", 1, "a")},
        {"GPU-0": ("args", 0, "b"), "GPU-1": ("args", 1, "b")},
    ]
    with pytest.raises(ValueError, match="different numbers"):
        merge_ipc_handles([rank0, rank1[:1]])
    payload = {**update_info([("a", [1], torch.bfloat16), ("b", [2], torch.bfloat16)])}
    payload["ipc_handles_pickled"] = pickle_ipc_handles(merged)
    monkeypatch.delenv("VLLM_ALLOW_INSECURE_SERIALIZATION", raising=False)
    with pytest.raises(ValueError, match="VLLM_ALLOW_INSECURE_SERIALIZATION"):
        IPCWeightTransferUpdateInfo(**payload)
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    assert IPCWeightTransferUpdateInfo(**payload).ipc_handles == merged


# -- Tied embeddings -----------------------------------------------------------------------


class _Head:
    def __init__(self, weight):
        self.weight = weight
        self.processed = 0
        self.quant_method = SimpleNamespace(process_weights_after_loading=self._process)

    def _process(self, layer):
        assert layer is self
        self.processed += 1

    def tie_weights(self, embed):
        self.weight = embed.weight
        return self


def _model(tied_now: bool, tie_config: bool):
    embed = SimpleNamespace(weight=torch.ones(3))
    head = _Head(embed.weight if tied_now else torch.zeros(3))
    config = SimpleNamespace(hf_config=SimpleNamespace(tie_word_embeddings=tie_config))
    return SimpleNamespace(lm_head=head, model=SimpleNamespace(embed_tokens=embed)), config


def test_a_tied_head_left_on_old_tensors_is_retied_and_reprocessed():
    model, config = _model(tied_now=False, tie_config=True)
    _retie_word_embeddings(model, config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.processed == 1


def test_untied_heads_are_left_alone():
    model, config = _model(tied_now=False, tie_config=False)
    old = model.lm_head.weight
    _retie_word_embeddings(model, config)
    assert model.lm_head.weight is old and model.lm_head.processed == 0


# -- The driver's orchestration --------------------------------------------------------------


def test_run_concurrently_overlaps_the_calls_and_keeps_their_order():
    both_in = threading.Barrier(2, timeout=5)  # breaks if the calls ran one after the other
    results = run_concurrently(lambda: both_in.wait() * 0 + 1, lambda: both_in.wait() * 0 + 2)
    assert results == [1, 2]


def test_run_concurrently_raises_without_waiting_for_a_peer_that_never_returns():
    never = threading.Event()

    def fail():
        raise RuntimeError("receiver refused")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="receiver refused"):
        run_concurrently(never.wait, fail)
    assert time.monotonic() - started < 5


class FakeLearner:
    def __init__(self, cfg: Config, log: list, barrier: threading.Barrier | None = None):
        self.cfg, self.log, self.barrier = cfg, log, barrier

    def send_weights(self, version):
        self.log.append(("send", version))
        if self.barrier:  # an NCCL broadcast returns only when the receivers are in it too
            self.barrier.wait()
        return WeightHandle(version, "fake", "data", 10, 2)

    def describe_weights(self, version):
        self.log.append(("describe", version))
        return WeightHandle(version, "nccl", {"names": ["a", "b"]}, 10, 2)

    def release_weights(self):
        self.log.append(("release",))

    def weight_sync_address(self):
        return "10.0.0.1", 29500

    def init_weight_transport(self, info):
        self.log.append(("learner_init", info))
        if self.barrier:
            self.barrier.wait()


class FakeRollout:
    def __init__(self, log: list, held: int = 0, barrier=None, fail: bool = False):
        self.log, self.held, self.barrier, self.fail = log, held, barrier, fail

    def weight_versions(self):
        return [self.held, self.held]

    def update_weights(self, handle):
        self.log.append(("update", handle.version, handle.transport))
        if self.barrier:
            self.barrier.wait()
        if self.fail:
            raise RuntimeError("load failed")
        return [handle.version]

    def init_weight_transport(self, infos):
        self.log.append(("rollout_init", infos))
        if self.barrier:
            self.barrier.wait()


def test_object_store_sync_is_send_then_update_with_the_same_handle():
    log: list = []
    handle = sync_weights(FakeLearner(load_config(None, []), log), FakeRollout(log), 3)
    assert log == [("send", 3), ("update", 3, "fake")]
    assert handle.version == 3 and handle.payload == "data"


def test_nccl_sync_announces_then_sends_and_receives_at_once():
    log: list = []
    barrier = threading.Barrier(2, timeout=5)
    cfg = load_config(None, GPU)
    handle = sync_weights(FakeLearner(cfg, log, barrier), FakeRollout(log, barrier=barrier), 1)
    assert log[0] == ("describe", 1)
    assert sorted(log[1:]) == [("send", 1), ("update", 1, "nccl")]
    assert handle.transport == "nccl" and handle.num_tensors == 2


def test_nccl_sync_refuses_a_stale_version_before_any_broadcast():
    log: list = []
    cfg = load_config(None, GPU)
    with pytest.raises(StaleWeightsError):
        sync_weights(FakeLearner(cfg, log), FakeRollout(log, held=4), 4)
    assert ("send", 4) not in log and not any(entry[0] == "update" for entry in log)


def test_cuda_ipc_sync_releases_the_exported_copies_even_when_loading_fails():
    log: list = []
    cfg = load_config(None, COLOCATED)
    sync_weights(FakeLearner(cfg, log), FakeRollout(log), 1)
    assert log == [("send", 1), ("update", 1, "fake"), ("release",)]
    log.clear()
    with pytest.raises(RuntimeError, match="load failed"):
        sync_weights(FakeLearner(cfg, log), FakeRollout(log, fail=True), 2)
    assert log[-1] == ("release",)


def test_connect_joins_learner_and_rollouts_at_once_for_nccl_only():
    log: list = []
    cfg = load_config(None, [*GPU, "rollout.num_workers=2", "sync.bucket_mb=8"])
    barrier = threading.Barrier(2, timeout=5)
    connect_weight_transport(FakeLearner(cfg, log, barrier), FakeRollout(log, barrier=barrier))
    infos = dict(log)
    assert infos["learner_init"]["world_size"] == 3
    assert [w["rank_offset"] for w in infos["rollout_init"]] == [1, 2]
    assert infos["rollout_init"][0]["packed_buffer_size_bytes"] == 8 << 20

    log.clear()
    connect_weight_transport(FakeLearner(load_config(None, []), log), FakeRollout(log))
    assert log == []
    connect_weight_transport(FakeLearner(load_config(None, COLOCATED), log), FakeRollout(log))
    assert log == [("rollout_init", [{"packed": False}])]


# -- The learner's half, on CPU with a fake engine ---------------------------------------------


class _TinyModule(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(5, 3)
        self.proj = torch.nn.Linear(3, 2)


class _RecordingTransport:
    def __init__(self, name):
        self.name, self.sent = name, None

    def send(self, named_tensors, version):
        self.sent = list(named_tensors)
        return WeightHandle(version, self.name, None, 0, len(self.sent))


def _learner(monkeypatch, overrides, rank=0, transport="nccl"):
    from score_ray.learner.actor import Learner

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # Learner() sets it; restored after the test
    learner = Learner(load_config(None, overrides), "unused", rank)
    learner.engine = SimpleNamespace(module=_TinyModule(), device="cpu")
    learner.transport = _RecordingTransport(transport)
    return learner


def test_learner_announces_full_shapes_in_the_rollout_dtype(monkeypatch):
    learner = _learner(monkeypatch, [*GPU, "rollout.dtype=bfloat16"])
    handle = learner.describe_weights(7)
    assert handle.version == 7 and handle.num_tensors == 3
    assert handle.payload == {
        "names": ["embed.weight", "proj.weight", "proj.bias"],
        "dtype_names": ["bfloat16"] * 3,
        "shapes": [[5, 3], [2, 3], [2]],
    }
    assert handle.num_bytes == (15 + 6 + 2) * 2
    # ZeRO-3 leaves a partitioned (empty) parameter and the full shape in ds_shape.
    learner.engine.module.proj.weight.ds_shape = torch.Size([2, 3])
    learner.engine.module.proj.weight.data = torch.empty(0)
    assert learner.weight_specs()[1] == ("proj.weight", [2, 3], torch.bfloat16)


def test_learner_rank0_sends_exactly_what_it_announced(monkeypatch):
    learner = _learner(monkeypatch, [*GPU, "rollout.dtype=bfloat16"])
    learner.send_weights(1)
    sent = learner.transport.sent
    assert [(n, t.dtype) for n, t in sent] == [
        (n, torch.bfloat16) for n in learner.describe_weights(1).payload["names"]
    ]
    module = learner.engine.module
    assert torch.equal(sent[1][1], module.proj.weight.detach().to(torch.bfloat16))
    # A later mismatch between what is announced and what is sent fails loudly.
    learner.weight_specs = lambda: [("embed.weight", [5, 3], torch.bfloat16)]
    with pytest.raises(ValueError, match="beyond the 1 announced"):
        learner.send_weights(2)


def test_only_cuda_ipc_sends_from_every_rank(monkeypatch):
    everything = ["embed.weight", "proj.weight", "proj.bias"]
    for transport, sends in (("object_store", False), ("nccl", False), ("cuda_ipc", True)):
        learner = _learner(monkeypatch, [], rank=1, transport=transport)
        result = learner.send_weights(1)
        sent = learner.transport.sent
        if sends:
            assert result is not None and [name for name, _ in sent] == everything
        else:
            assert result is None and sent is None
