"""Layout feasibility (fail at once, naming the role and the missing resource) and threads."""

import subprocess
import sys

import pytest

from score_ray.placement import LayoutError, RoleDemand, check_fits, pin_threads, torch_threads

GPU_NODE = {"CPU": 16.0, "GPU": 4.0, "memory": 1e11}
CPU_NODE = {"CPU": 8.0, "memory": 1e10}


def _demands(rollout_gpus=1.0, rollouts=2, learners=2, learner_gpus=1.0):
    return [
        RoleDemand("rollout", rollouts, {"CPU": 1.0, "GPU": rollout_gpus}),
        RoleDemand("learner", learners, {"CPU": 1.0, "GPU": learner_gpus}),
        RoleDemand("verifier", 2, {"CPU": 0.25}),
    ]


def test_layout_that_fits_passes():
    check_fits(_demands(), [GPU_NODE, CPU_NODE])


def test_too_few_gpus_in_total_names_the_resource_and_roles():
    with pytest.raises(LayoutError, match=r"GPU: the layout needs 6 \(rollout, learner\)"):
        check_fits(_demands(rollouts=4), [GPU_NODE, CPU_NODE])


def test_actor_larger_than_any_node_names_the_role():
    with pytest.raises(LayoutError, match="rollout: one actor needs") as err:
        check_fits(_demands(rollout_gpus=8.0, rollouts=1), [GPU_NODE, GPU_NODE])
    assert "largest per node" in str(err.value)


def test_gpu_layout_on_cpu_only_cluster():
    with pytest.raises(LayoutError, match="GPU") as err:
        check_fits(_demands(), [CPU_NODE])
    assert "learner" in str(err.value) and "rollout" in str(err.value)


def test_custom_resource_pinning():
    demands = [RoleDemand("rollout", 1, {"CPU": 1.0, "rollout_node": 1.0})]
    check_fits(demands, [CPU_NODE, {"CPU": 2.0, "rollout_node": 1.0}])
    with pytest.raises(LayoutError, match="rollout_node"):
        check_fits(demands, [CPU_NODE])


def test_no_nodes():
    with pytest.raises(LayoutError, match="no alive nodes"):
        check_fits(_demands(), [])


def test_colocated_rollout_and_learner_share_one_bundle_per_gpu():
    from score_ray.config import load_config
    from score_ray.placement import Placement, layout

    separate = load_config(None, ["rollout.num_gpus=1", "learner.num_gpus=1"])
    assert [d.role for d in layout(separate)] == ["rollout", "learner", "verifier"]
    cfg = load_config(
        None,
        [
            "rollout.num_gpus=0.5",
            "learner.num_gpus=0.5",
            "rollout.colocate_with_learner=true",
            "rollout.num_workers=2",
            "learner.world_size=2",
            "rollout.resources={tag: 1}",
        ],
    )
    shared, verifier = layout(cfg)
    assert (shared.role, shared.count, verifier.role) == ("rollout+learner", 2, "verifier")
    assert shared.bundle == {"CPU": 2.0, "GPU": 1.0, "tag": 1.0}
    check_fits(layout(cfg), [{"CPU": 8.0, "GPU": 2.0, "tag": 2.0}])
    with pytest.raises(LayoutError, match=r"GPU: the layout needs 2 \(rollout\+learner\)"):
        check_fits(layout(cfg), [{"CPU": 8.0, "GPU": 1.0, "tag": 2.0}])

    group = object()
    placement = Placement({"rollout": group, "learner": group})
    for index in (0, 1):
        rollout = placement.options("rollout", index)["scheduling_strategy"]
        learner = placement.options("learner", index)["scheduling_strategy"]
        assert rollout.placement_group is learner.placement_group is group
        assert rollout.placement_group_bundle_index == learner.placement_group_bundle_index


def test_torch_threads_split_the_node_among_actors_unless_set(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert torch_threads(0, 1) == 8  # not Ray's OMP_NUM_THREADS=num_cpus (1)
    assert torch_threads(0, 2) == 4
    assert torch_threads(0, 3) == 2
    assert torch_threads(0, 16) == 1  # more actors than cores: one each
    assert torch_threads(3, 2) == 3  # an explicit setting wins


@pytest.mark.parametrize("name", ["tiny", "demo", "default"])
def test_small_configs_fit_a_default_two_cpu_head(name):
    """`ray start --head` on a 2-core machine advertises 2 CPUs (issue 17, item 7)."""
    from pathlib import Path

    from score_ray.config import load_config
    from score_ray.placement import layout

    conf = Path(__file__).resolve().parents[2] / "conf"
    check_fits(layout(load_config(conf / f"{name}.yaml")), [{"CPU": 2.0, "memory": 1e10}])


def test_shortfall_names_the_config_keys_to_lower():
    from score_ray.config import load_config
    from score_ray.placement import layout

    cfg = load_config(None, ["verifier.num_workers=1"])  # 1 + 1 + 0.25 CPUs
    with pytest.raises(LayoutError) as err:
        check_fits(layout(cfg), [{"CPU": 2.0}])
    assert (
        "CPU: the layout needs 2.25 (rollout, learner, verifier), the cluster has 2: "
        "rollout.num_workers x rollout.num_cpus (1 x 1) + learner.world_size x learner.num_cpus "
        "(1 x 1) + verifier.num_workers x verifier.num_cpus (1 x 0.25); lower one of these keys"
    ) in str(err.value)
    big = load_config(
        None, ["rollout.num_gpus=1", "learner.num_gpus=1", "rollout.tensor_parallel_size=2"]
    )
    with pytest.raises(
        LayoutError, match=r"lower rollout\.num_gpus x rollout\.tensor_parallel_size"
    ):
        check_fits(layout(big)[:1], [{"CPU": 8.0, "GPU": 1.0}])


# -- GPU shares NCCL cannot use (checked before anything is reserved) ---------------------------


def _cfg(*overrides: str):
    from score_ray.config import load_config

    return load_config(None, list(overrides))


COLOCATED = ("rollout.colocate_with_learner=true", "rollout.num_workers=2", "learner.world_size=2")


@pytest.mark.parametrize(
    ("overrides", "key", "why"),
    [
        # two learner ranks on halves of one GPU: one NCCL communicator, one device
        (
            ("learner.num_gpus=0.5", "learner.world_size=2", "rollout.num_gpus=1"),
            "learner.num_gpus",
            "Duplicate GPU detected",
        ),
        # two engines (NCCL broadcast peers) on halves of one GPU
        (
            ("rollout.num_gpus=0.5", "rollout.num_workers=2", "learner.num_gpus=1"),
            "rollout.num_gpus",
            "a whole GPU per rank",
        ),
        # learner rank 0 is a broadcast peer of the engines
        (
            ("rollout.num_gpus=1", "learner.num_gpus=0.5", "sync.transport=nccl"),
            "learner.num_gpus",
            "NCCL peers",
        ),
        # tensor-parallel ranks are NCCL peers of each other
        (
            ("rollout.num_gpus=0.5", "rollout.tensor_parallel_size=2"),
            "rollout.num_gpus",
            "tensor_parallel_size=2",
        ),
        # more than one GPU per rank: reserved and never used
        (("rollout.num_gpus=2", "learner.num_gpus=1"), "rollout.num_gpus", "sit idle"),
        # colocated shares below 1: Ray may pack two bundles (two learner ranks) on one GPU
        (
            (*COLOCATED, "rollout.num_gpus=0.4", "learner.num_gpus=0.4"),
            "rollout.num_gpus + learner.num_gpus",
            "exactly 1",
        ),
    ],
)
def test_gpu_shares_nccl_rejects_fail_naming_the_keys(overrides, key, why):
    from score_ray.placement import check_gpu_layout, gpu_layout_problems

    cfg = _cfg(*overrides)
    problems = gpu_layout_problems(cfg)
    assert any(line.startswith(key + ":") and why in line for line in problems), problems
    with pytest.raises(LayoutError, match="NCCL cannot use") as err:
        check_gpu_layout(cfg)
    assert key in str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [
        (),  # CPU
        ("rollout.num_gpus=1", "learner.num_gpus=1"),
        ("rollout.num_gpus=1", "learner.num_gpus=1", "learner.world_size=2"),
        ("rollout.num_gpus=1", "rollout.tensor_parallel_size=2", "learner.num_gpus=1"),
        (*COLOCATED, "rollout.num_gpus=0.5", "learner.num_gpus=0.5"),
        (*COLOCATED, "rollout.num_gpus=0.3", "learner.num_gpus=0.7"),
        # no NCCL anywhere: two engines may share a GPU, one learner rank may take a part
        (
            "rollout.num_gpus=0.5",
            "rollout.num_workers=2",
            "learner.num_gpus=0.5",
            "sync.transport=object_store",
        ),
        ("rollout.num_gpus=0.25", "rollout.num_workers=4"),  # learner on CPU: object_store
    ],
)
def test_gpu_shares_nccl_accepts_pass(overrides):
    from score_ray.placement import gpu_layout_problems

    assert gpu_layout_problems(_cfg(*overrides)) == []


def test_reserve_checks_the_gpu_layout_before_asking_ray(monkeypatch):
    """A rejected layout fails before any node is read or group created."""
    import score_ray.placement as placement

    monkeypatch.setattr(placement, "node_capacities", lambda: pytest.fail("asked Ray"))
    cfg = _cfg("learner.num_gpus=0.5", "learner.world_size=2", "rollout.num_gpus=1")
    with pytest.raises(LayoutError, match=r"learner\.num_gpus"):
        placement.reserve(cfg, timeout_s=1.0)


def test_pinned_actors_get_one_thread_per_core(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert torch_threads(0, 1, [2, 3]) == 2
    assert torch_threads(4, 1, [2, 3]) == 4  # an explicit setting still wins


def test_pin_threads_names_the_key_of_a_missing_core():
    with pytest.raises(ValueError, match=r"learner\.cpu_cores: this node has cores"):
        pin_threads([10_000], "learner.cpu_cores")


def test_pin_threads_pins_every_thread_of_the_process():
    # In a child process: pinning this test process would slow the rest of the suite.
    code = (
        "import os, threading\n"
        "from score_ray.placement import pin_threads\n"
        "early = threading.Thread(target=threading.Event().wait, args=(5,), daemon=True)\n"
        "early.start()\n"
        "pin_threads([0], 'rollout.cpu_cores')\n"
        "masks = {os.sched_getaffinity(int(t)) == {0} for t in os.listdir('/proc/self/task')}\n"
        "print(masks == {True})\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
