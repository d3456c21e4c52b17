"""`score-ray plan`: the paper recipes against the cluster files, layouts too big for them,
memory estimates worked out by hand, and the architecture lookup. Nothing starts: no Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from score_ray.cli import main as cli_main
from score_ray.cluster_spec import read_cluster
from score_ray.config import ConfigError, ModelConfig, load_config
from score_ray.launch import local_cpus
from score_ray.model_facts import ModelFacts, facts_from_config, model_facts
from score_ray.plan import learner_estimate, rollout_estimate, tokens_per_step

REPO = Path(__file__).resolve().parents[2]
PAPER = sorted((REPO / "conf" / "paper").glob("*.yaml"))
AWS = str(REPO / "cluster" / "aws-gpu.yaml")
MATH = REPO / "conf" / "paper" / "math_qwen2.5-1.5b-instruct.yaml"
HUMANEVAL = REPO / "conf" / "paper" / "humaneval_qwen2.5-coder-1.5b-instruct.yaml"
GIB = 2**30
QWEN_1_5B_PARAMETERS = 1_543_714_304  # Qwen2.5-1.5B: "1.54B" on its model card


@pytest.fixture
def data_overrides(tmp_path: Path) -> list[str]:
    """task.path / task.eval_path: two rows in the format each recipe's task source reads."""
    rows = {
        "math": {"problem": "What is $1+1$?", "answer": "2"},
        "mbpp": {"text": "Write add(a, b).", "test_list": ["assert add(1, 2) == 3"]},
    }
    for name, row in rows.items():
        for split in ("train", "test"):
            (tmp_path / f"{name}-{split}.jsonl").write_text(json.dumps(row) + "\n")
    return [f"task.path={tmp_path}/KIND-train.jsonl", f"task.eval_path={tmp_path}/KIND-test.jsonl"]


def plan(recipe: Path, overrides: list[str], *extra: str) -> list[str]:
    kind = "mbpp" if "mbpp" in recipe.name else "math"
    data = [o.replace("KIND", kind) for o in overrides] if "humaneval" not in recipe.name else []
    return ["plan", "--config", str(recipe), *extra, *data]


@pytest.mark.parametrize("recipe", PAPER, ids=lambda p: p.name)
def test_paper_recipes_plan_cleanly_on_aws(recipe, data_overrides, capsys):
    assert cli_main(plan(recipe, data_overrides, "--cluster", AWS)) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("plan: fits")
    assert f"{QWEN_1_5B_PARAMETERS:,} parameters" in out
    # The math recipe splits rollout and learner GPUs (NCCL); the code recipes share them.
    assert ("sync      cuda_ipc" in out) == (recipe != MATH)
    assert ("sync      nccl" in out) == (recipe == MATH)


def test_the_recipes_state_the_paper_values():
    math = load_config(MATH, ["task.path=conf/tiny.yaml", "task.eval_path=conf/tiny.yaml"])
    code = load_config(HUMANEVAL)
    assert (math.algo.alpha, math.algo.beta1, math.algo.beta2) == (10.0, 0.01, 0.1)
    assert (code.algo.alpha, code.algo.beta1, code.algo.beta2) == (10.0, 0.01, 0.25)
    assert (math.learner.lr, code.learner.lr) == (5e-6, 1e-5)
    assert (math.traces_per_step, code.traces_per_step) == (512, 128)
    assert math.train.stage1_steps + math.train.stage2_steps == 3000
    assert code.train.stage1_steps + code.train.stage2_steps == 1500
    assert math.rollout.temperature == code.rollout.temperature == 1.0
    # `{question}` is filled in with str.format: \boxed{} must survive it.
    assert math.prompts.attempt1.format(question="Q").endswith("within \\boxed{}.")


def test_a_layout_too_big_for_the_cluster_fails_naming_the_resource(data_overrides, capsys):
    args = plan(MATH, data_overrides, "--cluster", AWS)
    assert cli_main([*args, "rollout.num_workers=8", "learner.world_size=8"]) == 3
    err = capsys.readouterr().err
    assert "GPU: the layout needs 16 (rollout, learner), the cluster has 8" in err


def test_a_learner_too_big_for_its_gpu_fails_naming_gpu_memory(data_overrides, capsys):
    # ZeRO-0: every rank holds 2 + 2 + 12 bytes per parameter plus the reference: > 24 GiB.
    assert cli_main([*plan(MATH, data_overrides, "--cluster", AWS), "learner.zero_stage=0"]) == 3
    err = capsys.readouterr().err
    assert "GPU memory: a learner rank needs at least" in err and "a GPU has 24 GiB" in err
    assert "learner.zero_stage" in err


def test_colocated_vllm_share_counts_against_the_learners_gpu(capsys):
    args = plan(HUMANEVAL, [], "--cluster", AWS)
    assert cli_main([*args, "rollout.gpu_memory_utilization=0.7"]) == 3
    err = capsys.readouterr().err
    assert "vLLM's 0.7 of the GPU it shares" in err and "rollout.gpu_memory_utilization" in err


def test_kuberay_cluster_is_read_and_too_small_for_the_recipe(capsys):
    args = plan(HUMANEVAL, [], "--cluster", str(REPO / "cluster" / "kuberay-rayjob.yaml"))
    assert cli_main([*args, "--gpu-memory-gib", "80"]) == 3
    captured = capsys.readouterr()
    assert "GPU: the layout needs 4 (rollout+learner), the cluster has 2" in captured.err
    assert "of 80 GiB" in captured.out


def test_plan_on_this_machine_starts_nothing(capsys):
    import ray

    # Another test in the same process may have left a Ray instance up; what counts is
    # that `plan` does not start one.
    ray.shutdown()
    assert cli_main(["plan", "--config", str(REPO / "conf" / "tiny.yaml")]) == 0
    out = capsys.readouterr().out
    cfg = load_config(REPO / "conf" / "tiny.yaml")
    assert f"1 x {{CPU: {local_cpus(cfg)}}}" in out and "object_store" in out
    assert not ray.is_initialized()


def test_config_errors_are_reported_as_for_train(capsys):
    assert cli_main(["plan", "--config", str(MATH), "learner.lr=-1"]) == 2
    assert "learner.lr" in capsys.readouterr().err
    assert cli_main(["plan", "--cluster", "no/such.yaml"]) == 2
    assert "--cluster: file not found" in capsys.readouterr().err


# -- Estimates by hand -------------------------------------------------------------------

FACTS = ModelFacts(
    "hand", "llama", parameters=1000, vocab_size=10, num_layers=2, num_kv_heads=1, head_dim=4
)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # fp32 on CPU, ZeRO-0, one rank: params 4, grads 4, Adam m+v 8, reference 4 bytes each.
        (
            ["learner.zero_stage=0"],
            {"parameters": 4000, "gradients": 4000, "optimizer": 8000, "reference": 4000},
        ),
        # ZeRO-2 over 2 ranks (fp32): gradients and the 12-byte optimizer state halved.
        (
            ["learner.zero_stage=2", "learner.world_size=2"],
            {"parameters": 4000, "gradients": 2000, "optimizer": 6000, "reference": 4000},
        ),
        # bf16 on GPUs, ZeRO-3 over 4 ranks: 2-byte params and grads, 12 bytes of optimizer
        # state (fp32 master + m + v), all divided by 4; the reference is a ZeRO-3 engine too.
        (
            [
                "learner.zero_stage=3",
                "learner.world_size=4",
                "model.dtype=bfloat16",
                "learner.num_gpus=1",
                "rollout.num_gpus=1",
            ],
            {"parameters": 500, "gradients": 500, "optimizer": 3000, "reference": 500},
        ),
        # ... colocated with vLLM: its shards stay in CPU memory (parameter offload).
        (
            [
                "learner.zero_stage=3",
                "learner.world_size=2",
                "model.dtype=bfloat16",
                "learner.num_gpus=0.5",
                "rollout.num_gpus=0.5",
                "rollout.num_workers=2",
                "rollout.colocate_with_learner=true",
            ],
            {"parameters": 1000, "gradients": 1000, "optimizer": 6000, "reference": 0},
        ),
        # ZeRO-2 colocated: the whole reference comes to the GPU for the step (offloaded after).
        (
            [
                "learner.zero_stage=2",
                "model.dtype=bfloat16",
                "learner.num_gpus=0.5",
                "rollout.num_gpus=0.5",
                "rollout.colocate_with_learner=true",
            ],
            {"parameters": 2000, "gradients": 2000, "optimizer": 12000, "reference": 2000},
        ),
    ],
)
def test_learner_model_states_by_hand(overrides, expected):
    cfg = load_config(None, [*overrides, "train.prompts_per_step=8"])
    parts = learner_estimate(cfg, FACTS).parts
    assert {k: v for k, v in parts.items() if k != "logits"} == expected
    # logits of one micro-batch: mb x (2 x max_new_tokens) x vocab x (dtype + fp32 copy)
    width = 4 if cfg.model.dtype == "float32" else 2 + 4
    assert parts["logits"] == cfg.learner.micro_batch_size * 2 * 256 * 10 * width


def test_rollout_kv_cache_by_hand():
    gpu = load_config(
        None, ["rollout.num_gpus=1", "learner.num_gpus=1", "rollout.gpu_memory_utilization=0.5"]
    )
    estimate = rollout_estimate(gpu, FACTS, gpu_memory_gib=1.0)
    # bf16 weights 2000 B; KV: 0.5 GiB - 2000 B, each token 2 x 2 layers x 1 head x 4 x 2 B.
    assert estimate.parts["weights"] == 2000
    assert estimate.kv_tokens == int((0.5 * GIB - 2000) / 32)
    cpu = rollout_estimate(load_config(None, ["rollout.kv_cache_gib=2"]), FACTS, None)
    assert cpu.parts["kv cache"] == 2 * GIB and cpu.device == "CPU"


def test_tokens_per_step_by_hand():
    cfg = load_config(REPO / "conf" / "tiny.yaml")  # 2 prompts x 2 samples, 24 new tokens
    tokens = tokens_per_step(cfg)
    assert (tokens.traces, tokens.generated, tokens.forward) == (4, 4 * 2 * 24, 4 * 512)
    assert tokens.steps == 4 and tokens.micro_batches_per_rank == 1
    # Two second attempts per first attempt: 4 first + 8 second attempts, 8 traces.
    branched = tokens_per_step(
        load_config(REPO / "conf" / "tiny.yaml", ["rollout.attempt2_samples=2"])
    )
    assert (branched.traces, branched.generated, branched.trained) == (8, 12 * 24, 8 * 2 * 24)


# -- Architecture lookup ------------------------------------------------------------------


def test_parameter_count_matches_the_real_model():
    from score_ray.models import make_tiny_llama

    model = make_tiny_llama(vocab_size=512)
    facts = facts_from_config(model.config.to_dict(), "tiny")
    assert facts.parameters == sum(p.numel() for p in model.parameters())
    assert (facts.num_layers, facts.head_dim) == (2, 64)


def test_shipped_shape_gives_qwen_without_the_hub():
    facts = model_facts(ModelConfig(path="Qwen/Qwen2.5-1.5B-Instruct"))
    assert facts.parameters == QWEN_1_5B_PARAMETERS
    assert facts.kv_bytes_per_token(2) == 2 * 28 * 2 * 128 * 2


def test_unknown_hub_model_names_the_key_and_the_way_out(monkeypatch, tmp_path):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ConfigError, match=r"model\.path: cannot read the config\.json of 'org/x'"):
        model_facts(ModelConfig(path="org/x"))
    with pytest.raises(ConfigError, match="--model-config"):
        model_facts(ModelConfig(path="org/x"))
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 64,
                "num_attention_heads": 1,
                "num_hidden_layers": 1,
                "intermediate_size": 128,
                "vocab_size": 100,
            }
        )
    )
    assert model_facts(ModelConfig(path="org/x"), str(config)).num_layers == 1


def test_cluster_files_are_read_with_their_counts():
    aws, _ = read_cluster(AWS)
    assert [(t.count, t.resources.get("GPU", 0), t.gpu_memory_gib) for t in aws] == [
        (1, 0, None),
        (4, 1, 24),
        (1, 4, 24),
    ]
    kuberay, notes = read_cluster(REPO / "cluster" / "kuberay-rayjob.yaml")
    assert [(t.name, t.count, t.resources) for t in kuberay] == [
        ("head", 1, {"CPU": 8.0}),
        ("gpu", 2, {"CPU": 8.0, "GPU": 1.0}),
    ]
    assert kuberay[1].memory_gib == 48 and notes
