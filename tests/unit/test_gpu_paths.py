"""GPU-path decisions, pinned without a GPU (issue 16 item 6): the colocated engine's sleep and
wake-up order, the learner handing cached GPU memory back, recovery waiting for killed
processes to free their GPUs, and where the reference model lives. Fakes stand in for vLLM,
Ray groups and CUDA; only the decisions and the call order are under test."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import score_ray.trainer as trainer_module
from score_ray.config import load_config
from score_ray.gpu_release import GpuNotReleasedError, release_probes, wait_until_free
from score_ray.learner.actor import (
    REFERENCE_OFFLOADED,
    REFERENCE_RESIDENT,
    REFERENCE_SHARDED,
    Learner,
    deepspeed_config,
    reference_bytes,
    reference_deepspeed_config,
    reference_placement,
)
from score_ray.pipeline import RolloutPipeline
from score_ray.rollout.sleep import KV_CACHE, WEIGHTS, EngineAsleepError, SleepState
from score_ray.rollout.worker import RolloutWorker
from score_ray.sync import sync_weights
from score_ray.transport import WeightHandle

COLOCATED = ["rollout.num_gpus=0.5", "learner.num_gpus=0.5", "rollout.colocate_with_learner=true"]
GPU = ["rollout.num_gpus=1", "learner.num_gpus=1"]

# -- The sleep state machine ---------------


def test_level_two_sleep_wakes_weights_then_sync_then_kv_cache():
    state = SleepState()
    assert state.level == 2 and state.to_sleep()
    state.slept()
    assert not state.to_sleep()  # a second sleep is a no-op
    with pytest.raises(EngineAsleepError, match="before the KV cache"):
        state.to_wake([KV_CACHE])
    with pytest.raises(EngineAsleepError, match="weights are asleep"):
        state.check_loadable()
    assert state.to_wake([WEIGHTS]) == [WEIGHTS]
    state.woke([WEIGHTS])
    # Weights mapped, but level 2 dropped their contents: no KV cache, no serving before a sync.
    with pytest.raises(EngineAsleepError, match="only after a weight sync"):
        state.to_wake([KV_CACHE])
    with pytest.raises(EngineAsleepError, match="cannot serve"):
        state.check_serving()
    state.check_loadable()
    state.loaded()
    with pytest.raises(EngineAsleepError, match="cannot serve"):
        state.check_serving()  # KV cache still asleep
    assert state.to_wake(None) == [KV_CACHE]  # None: whatever is still asleep
    state.woke([KV_CACHE])
    state.check_serving()
    assert state.to_wake(None) == []


def test_all_at_once_wake_is_refused_after_level_two_but_fine_after_level_one():
    level2 = SleepState()
    level2.slept()
    with pytest.raises(EngineAsleepError, match="only after a weight sync"):
        level2.to_wake(None)
    level1 = SleepState(level=1)  # weights were kept on the CPU
    level1.slept()
    assert level1.to_wake(None) == [WEIGHTS, KV_CACHE]
    with pytest.raises(ValueError, match="unknown sleep tags"):
        level1.to_wake(["scheduling"])


class _FakeLLM:
    """Records the sleep-mode calls a RolloutWorker makes on its `vllm.LLM`."""

    def __init__(self, calls: list) -> None:
        self.calls = calls

    def sleep(self, level: int) -> None:
        self.calls.append(("sleep", level))

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.calls.append(("wake_up", tags))

    def reset_prefix_cache(self) -> None:
        self.calls.append(("reset_prefix_cache",))


def _worker(calls: list) -> RolloutWorker:
    worker = object.__new__(RolloutWorker)  # no engine: only the sleep logic runs
    worker.llm = _FakeLLM(calls)
    worker.worker_index = 0
    worker._version = 0
    worker._sleep = SleepState()
    worker.transport = SimpleNamespace(
        receive=lambda llm, handle: calls.append(("receive", handle.version)) or 3
    )
    return worker


def test_rollout_worker_passes_level_and_tags_to_vllm_in_order():
    calls: list = []
    worker = _worker(calls)
    worker.sleep()
    worker.sleep()
    with pytest.raises(EngineAsleepError):
        worker.update_weights(WeightHandle(1, "fake", None, 0, 3))  # weights not mapped
    worker.wake_up([WEIGHTS])
    with pytest.raises(EngineAsleepError):
        worker.wake_up([KV_CACHE])  # no sync yet
    with pytest.raises(EngineAsleepError):
        worker.sequence_logprobs([[1, 2]])  # would serve discarded weights
    assert worker.update_weights(WeightHandle(1, "fake", None, 0, 3)) == 1
    worker.wake_up([KV_CACHE])
    worker.wake_up()  # nothing left asleep: no call
    assert calls == [
        ("sleep", 2),
        ("wake_up", [WEIGHTS]),
        ("receive", 1),
        ("reset_prefix_cache",),
        ("wake_up", [KV_CACHE]),
    ]


# -- The driver's order: sleep, train, wake weights, sync, learner frees, wake KV cache


class _Recorder:
    """A fake learner or rollout group that records every call as (role.method, args)."""

    def __init__(self, role: str, calls: list) -> None:
        self.role, self.calls = role, calls

    def __getattr__(self, name: str):
        def call(*args):
            self.calls.append((f"{self.role}.{name}", *args))
            if name == "train_step":
                return {"loss": 0.0}
            if name == "send_weights":
                return WeightHandle(args[0], "cuda_ipc", {"names": []}, 0, 0)
            return None

        return call


def _trainer(overrides: list[str], calls: list):
    trainer = object.__new__(trainer_module.Trainer)
    trainer.cfg = load_config(None, overrides)
    learner = _Recorder("learner", calls)
    learner.cfg = trainer.cfg  # sync_weights reads the transport from it
    trainer.actors = SimpleNamespace(learner=learner, rollout=_Recorder("rollout", calls))
    trainer.version = 0
    # Synchronous (max_staleness 0): nothing is ever in flight, so nothing is launched.
    trainer.rollouts = RolloutPipeline(launch=None, ahead=0)
    return trainer


def test_colocated_step_wakes_weights_before_the_sync_and_kv_cache_after_the_release():
    calls: list = []
    trainer = _trainer(COLOCATED, calls)
    batch, adv = object(), torch.zeros(2)
    trainer.learn_and_sync(batch, adv, adv, 1, adv, {})
    assert [c[0] for c in calls] == [
        "rollout.sleep",
        "learner.train_step",  # the learner empties its CUDA cache at its end (below)
        "rollout.wake_up",
        "learner.send_weights",  # sync_weights, cuda_ipc
        "rollout.update_weights",
        "learner.release_weights",  # frees the exported copy and the cache
        "rollout.wake_up",
    ]
    assert calls[2][1] == [WEIGHTS] and calls[-1][1] == [KV_CACHE]


def test_separate_gpus_never_sleep():
    calls: list = []
    _trainer(GPU + ["sync.transport=object_store"], calls).learn_and_sync(
        object(), torch.zeros(2), torch.zeros(2), 1, torch.zeros(2), {}
    )
    assert [c[0] for c in calls] == [
        "learner.train_step",
        "learner.send_weights",
        "rollout.update_weights",
    ]


def test_sync_weights_is_what_the_order_test_drives():
    # Guard for the test above: the real sync_weights, not a stub, produced the middle calls.
    assert trainer_module.sync_weights is sync_weights


# -- The learner hands cached GPU memory back ---------------


def _learner(
    monkeypatch, events: list, on_gpu: bool = True, placement: str = REFERENCE_RESIDENT
) -> Learner:
    learner = object.__new__(Learner)
    learner.on_gpu = on_gpu
    learner.engine = SimpleNamespace(device="cuda:0")
    learner.reference_placement = placement
    learner.reference = SimpleNamespace(to=lambda device: events.append(f"reference to {device}"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: events.append("empty_cache"))
    return learner


def test_learner_empties_the_cuda_cache_after_each_step_even_a_failed_one(monkeypatch):
    events: list = []
    learner = _learner(monkeypatch, events)
    learner._train_step = lambda shard, stage: events.append("step") or {"loss": 1.0}
    assert learner.train_step(None, 1) == {"loss": 1.0}
    assert events == ["step", "empty_cache"]

    def failing(shard, stage):
        raise RuntimeError("CUDA out of memory")

    learner._train_step = failing
    with pytest.raises(RuntimeError):
        learner.train_step(None, 1)
    assert events == ["step", "empty_cache", "empty_cache"]


def test_learner_empties_the_cache_after_releasing_a_sync_and_not_on_cpu(monkeypatch):
    events: list = []
    learner = _learner(monkeypatch, events)
    learner.transport = SimpleNamespace(release=lambda: events.append("release"))
    learner.release_weights()
    assert events == ["release", "empty_cache"]
    cpu = _learner(monkeypatch, events, on_gpu=False)
    cpu.free_gpu_cache()
    assert events == ["release", "empty_cache"]


# -- Recovery waits for the killed processes to free their GPUs ---------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_wait_until_free_polls_until_the_share_vllm_needs_is_free():
    clock = _Clock()
    shares = iter([0.1, 0.3, 0.5, 0.95])
    seen = wait_until_free(lambda: next(shares), 0.9, 60, 2.0, clock, clock.sleep)
    assert seen == 0.95 and clock.now == 6.0  # three waits of 2 s


def test_wait_until_free_times_out_naming_the_gpu_and_the_need():
    clock = _Clock()
    with pytest.raises(GpuNotReleasedError, match=r"bundle 1: 40% .* after 5 s.*=0\.9") as err:
        wait_until_free(lambda: 0.4, 0.9, 5, 2.0, clock, clock.sleep, where="bundle 1")
    assert isinstance(err.value, TimeoutError) and clock.now == 5.0  # the last wait is cut short


def test_release_probes_cover_every_rollout_bundle_and_its_gpus():
    colocated = release_probes(
        load_config(None, [*COLOCATED, "rollout.num_workers=2", "learner.world_size=2"])
    )
    assert colocated is not None
    assert (colocated.count, colocated.gpus, colocated.need) == (2, 1.0, 0.5)
    tp = release_probes(
        load_config(None, [*GPU, "rollout.tensor_parallel_size=2", "rollout.num_workers=3"])
    )
    assert tp is not None and (tp.count, tp.gpus) == (3, 2.0)
    assert release_probes(load_config(None, [])) is None  # CPU engines: nothing to wait for


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            COLOCATED,  # cuda_ipc: the engines restart, after the GPUs are free
            [
                "learner.shutdown",
                "rollout.shutdown",
                "wait_for_gpu_release",
                "RolloutGroup",
                "LearnerGroup",
                "connect",
                "sync",
                "rollout.wake_up",
            ],
        ),
        (
            [*COLOCATED, "sync.transport=object_store"],  # the engines stay; weights, sync, KV
            ["learner.shutdown", "rollout.wake_up", "LearnerGroup", "connect", "sync"]
            + ["rollout.wake_up"],
        ),
    ],
)
def test_recovery_restarts_engines_only_after_the_gpus_are_free(monkeypatch, overrides, expected):
    calls: list = []
    trainer = _trainer(overrides, calls)
    trainer.model_path, trainer.learner_restarts, trainer.checkpoints = "m", 0, "ckpts"
    trainer.actors.placement = object()
    trainer.metrics = SimpleNamespace(close=lambda: None)
    trainer.output_dir, trainer.global_step, trainer.initial_state = "out", 0, {}

    def make(role: str):
        def build(*args):
            calls.append((role,))
            return _Recorder(role.removesuffix("Group").lower(), calls)

        return build

    monkeypatch.setattr(trainer_module, "RolloutGroup", make("RolloutGroup"))
    monkeypatch.setattr(trainer_module, "LearnerGroup", make("LearnerGroup"))
    monkeypatch.setattr(
        trainer_module, "wait_for_gpu_release", lambda *a: calls.append(("wait_for_gpu_release",))
    )
    monkeypatch.setattr(
        trainer_module, "connect_weight_transport", lambda *a: calls.append(("connect",))
    )
    monkeypatch.setattr(trainer_module, "latest_checkpoint", lambda directory: None)
    monkeypatch.setattr(trainer_module, "MetricsLogger", lambda *a, **k: None)
    trainer._continue_from = lambda state: calls.append(("sync",))
    trainer.recover_learner(RuntimeError("rank 1 died"))
    assert [c[0] for c in calls] == expected
    wakes = [c[1:] for c in calls if c[0] == "rollout.wake_up"]
    if "wait_for_gpu_release" not in expected:
        assert wakes == [([WEIGHTS],), ()]  # weights before the sync, the rest after


# -- Where the reference model lives ------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "on_gpu", "expected"),
    [
        (["learner.zero_stage=3", "learner.world_size=2"], False, REFERENCE_SHARDED),
        ([*GPU, "learner.zero_stage=3", "learner.world_size=2"], True, REFERENCE_SHARDED),
        ([*COLOCATED, "learner.zero_stage=3"], True, REFERENCE_SHARDED),
        ([*COLOCATED, "learner.zero_stage=2"], True, REFERENCE_OFFLOADED),
        ([*GPU, "learner.zero_stage=2"], True, REFERENCE_RESIDENT),
        (["learner.zero_stage=0"], False, REFERENCE_RESIDENT),
    ],
)
def test_reference_placement_follows_the_zero_stage_and_colocation(overrides, on_gpu, expected):
    assert reference_placement(load_config(None, overrides), on_gpu) == expected


def test_reference_engine_is_zero3_and_offloads_its_shards_only_beside_vllm():
    colocated = load_config(None, [*COLOCATED, "learner.zero_stage=3"])
    config = reference_deepspeed_config(colocated, on_gpu=True)
    assert config["zero_optimization"] == {
        "stage": 3,
        "offload_param": {"device": "cpu", "pin_memory": True},
    }
    policy = deepspeed_config(colocated, on_gpu=True)
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "bf16", "fp16"):
        assert config[key] == policy[key]  # DeepSpeed checks the batch arithmetic per engine
    separate = load_config(None, [*GPU, "learner.zero_stage=3", "learner.world_size=2"])
    assert reference_deepspeed_config(separate, True)["zero_optimization"] == {"stage": 3}


def test_offloaded_reference_is_on_the_gpu_only_during_the_step(monkeypatch):
    events: list = []
    learner = _learner(monkeypatch, events, placement=REFERENCE_OFFLOADED)
    learner._train_step = lambda shard, stage: events.append("step") or {}
    learner.train_step(None, 2)
    # Back on the CPU before the cache is emptied, so its blocks go back to the driver too.
    assert events == ["reference to cuda:0", "step", "reference to cpu", "empty_cache"]


def test_reference_bytes_count_a_zero3_rank_its_partition_only():
    model = torch.nn.Linear(4, 8)  # 32 + 8 float32 parameters
    assert reference_bytes(model) == 40 * 4
    model.weight.ds_tensor = torch.zeros(16)  # what ZeRO-3 leaves on this rank
    assert reference_bytes(model) == (16 + 8) * 4
    model.weight.ds_persist = True  # small enough to stay whole on every rank
    assert reference_bytes(model) == 40 * 4
    assert reference_bytes(None) == 0  # no separate reference module
