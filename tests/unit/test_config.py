"""Config loading: merge order, rejection of unknown keys and invalid values."""

from pathlib import Path

import pytest
import yaml

from score_ray.config import ConfigError, load_config, save_config

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_defaults_file_and_overrides_merge_in_order(tmp_path):
    cfg = load_config(CONF / "tiny.yaml", ["learner.lr=3e-4", f"output_dir={tmp_path}"])
    assert cfg.model.path == "tiny-llama"  # from the file
    assert cfg.learner.lr == 3e-4  # override beats file
    assert cfg.algo.alpha == 10.0  # default kept
    assert cfg.output_dir == str(tmp_path)
    assert cfg.traces_per_step == cfg.train.prompts_per_step * cfg.train.samples_per_prompt


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    load_config(path)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"learner\.lrr"):
        load_config(None, ["learner.lrr=1"])
    with pytest.raises(ConfigError, match="bogus"):
        load_config(None, ["bogus=1"])


def test_unknown_key_in_yaml_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  stage1_stepz: 3\n")
    with pytest.raises(ConfigError, match="stage1_stepz"):
        load_config(path)


def test_ill_typed_value_is_named():
    with pytest.raises(ConfigError, match=r"learner\.lr"):
        load_config(None, ["learner.lr=fast"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("learner.lr=-1e-5", "learner.lr"),
        ("algo.alpha=-1", "algo.alpha"),
        ("algo.beta1=-0.1", "algo.beta1"),
        ("algo.beta2=-0.1", "algo.beta2"),
        ("train.samples_per_prompt=1", "train.samples_per_prompt"),
        ("model.path=/no/such/model", "model.path"),
        ("model.path=./relative/missing", "model.path"),
        ("learner.zero_stage=4", "learner.zero_stage"),
        ("task.source=csv", "task.source"),
        ("task.path=/no/such.jsonl", "task.path"),
        ("prompts.attempt1=no placeholder", "prompts.attempt1"),
        ("rollout.temperature=-1", "rollout.temperature"),
        # issue 13: training needs T > 0, a full softmax, a KL loss with a gradient, an fp32
        # master copy of the weights
        ("rollout.temperature=0", "rollout.temperature"),
        ("rollout.attempt2_temperature=0", "rollout.attempt2_temperature"),
        ("rollout.top_p=0.9", "rollout.top_p"),
        ("algo.kl_estimator=k1", "algo.kl_estimator"),
        ("algo.kl_estimator=k4", "algo.kl_estimator"),
        ("algo.credit=future", "algo.credit"),
        ("algo.gamma=1.5", "algo.gamma"),
        ("model.dtype=bfloat16", "model.dtype"),
        ("model.dtype=float16", "model.dtype"),
        ("rollout.attempt2_samples=0", "rollout.attempt2_samples"),
        ("train.offline_attempt1_fraction=1.5", "train.offline_attempt1_fraction"),
        ("train.reachable_samples=1", "train.reachable_samples"),
        ("train.reachable_pool_size=-1", "train.reachable_pool_size"),
        ("task.dev_size=-1", "task.dev_size"),
        # used to divide by zero in the batch-split check instead of naming the key
        ("learner.world_size=0", "learner.world_size"),
        ("learner.micro_batch_size=0", "learner.micro_batch_size"),
        # issue 14: asynchronous rollout, importance cap, core pinning, token budgets
        ("train.max_staleness=2", "train.max_staleness"),
        ("algo.is_ratio_cap=0.5", "algo.is_ratio_cap"),
        ("learner.max_tokens_per_micro_batch=-1", "learner.max_tokens_per_micro_batch"),
        ("rollout.cpu_cores=[-1]", "rollout.cpu_cores"),
        ("learner.cpu_cores=[1,1]", "learner.cpu_cores"),
        ("train.time_budget_s=-1", "train.time_budget_s"),
    ],
)
def test_invalid_values_are_rejected_with_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["learner.lr=-1", "algo.alpha=-2"])
    assert "learner.lr" in str(err.value) and "algo.alpha" in str(err.value)


def test_batch_must_split_over_ranks():
    with pytest.raises(ConfigError, match="split evenly"):
        load_config(
            None,
            [
                "train.prompts_per_step=3",
                "train.samples_per_prompt=2",
                "learner.world_size=2",
                "learner.micro_batch_size=2",
            ],
        )


def test_branching_counts_in_the_batch_split():
    # 3 prompts x 2 samples x 2 revisions = 12 traces: splits into 2 ranks x 3, not into 5
    cfg = load_config(
        None,
        [
            "train.prompts_per_step=3",
            "train.samples_per_prompt=2",
            "rollout.attempt2_samples=2",
            "learner.world_size=2",
            "learner.micro_batch_size=3",
        ],
    )
    assert cfg.traces_per_step == 12
    with pytest.raises(ConfigError, match="attempt2_samples"):
        load_config(
            None,
            [
                "train.prompts_per_step=3",
                "rollout.attempt2_samples=2",
                "learner.micro_batch_size=5",
            ],
        )


def test_low_precision_learner_needs_a_gpu_and_attempt2_temperature_defaults():
    cfg = load_config(None, ["model.dtype=bfloat16", "learner.num_gpus=1"])
    assert cfg.model.dtype == "bfloat16"
    cfg = load_config(None, ["rollout.temperature=0.7"])
    assert cfg.attempt2_temperature == 0.7
    cfg = load_config(None, ["rollout.temperature=0.7", "rollout.attempt2_temperature=0.2"])
    assert cfg.attempt2_temperature == 0.2


def test_hub_id_and_local_folder_accepted(tmp_path):
    assert load_config(None, ["model.path=HuggingFaceTB/SmolLM2-135M-Instruct"]).model.path
    assert load_config(None, [f"model.path={tmp_path}"]).model.path == str(tmp_path)


def test_missing_config_file_and_bad_override():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/no/such.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["learner.lr"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(CONF / "tiny.yaml", ["algo.alpha=3"])
    save_config(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["algo"]["alpha"] == 3.0
    assert load_config(tmp_path / "config.yaml") == cfg


def test_docs_document_every_config_key():
    from score_ray.config import markdown_reference

    page = (CONF.parent / "docs" / "configuration.md").read_text()
    assert markdown_reference() in page, (
        "docs/configuration.md's table is stale: paste the output of `python -m score_ray.config`"
    )


def test_few_shot_examples_load_and_bad_ones_are_named(tmp_path):
    path = tmp_path / "examples.yaml"
    path.write_text(
        "prompts:\n  examples:\n"
        "    - {question: 'Calculate 1 + 2.', response: '<answer>3</answer>'}\n"
    )
    cfg = load_config(path)
    assert cfg.prompts.examples[0].question == "Calculate 1 + 2."
    assert cfg.prompts.examples[0].response == "<answer>3</answer>"
    with pytest.raises(ConfigError, match="answr"):
        load_config(None, ["prompts.examples=[{question: a, answr: b}]"])
    with pytest.raises(ConfigError, match=r"prompts\.examples\[0\]\.response"):
        load_config(None, ["prompts.examples=[{question: a, response: ' '}]"])


def test_several_config_files_merge_in_order(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("learner: {lr: 1.0e-4}\nalgo: {alpha: 3.0}\n")
    second.write_text("algo: {alpha: 0.0}\n")
    cfg = load_config([first, second], ["algo.beta1=0.5"])
    assert (cfg.learner.lr, cfg.algo.alpha, cfg.algo.beta1) == (1e-4, 0.0, 0.5)
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        load_config([first, tmp_path / "missing.yaml"])


@pytest.mark.parametrize("path", sorted((CONF / "ablations").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_ablation_layers_over_the_demo_config(path):
    demo = load_config(CONF / "demo.yaml")
    ablation = load_config([CONF / "demo.yaml", path])
    assert ablation != demo
    # The same budget: every ablation runs as many policy updates as the demo, except STaR in
    # Stage II, whose Stage II samples as many traces as the demo's and then fine-tunes.
    if ablation.train.stage2_method == "star":
        assert ablation.train.stage1_steps == demo.train.stage1_steps
        sampled = (
            ablation.sft.rounds * ablation.sft.problems_per_round * ablation.sft.samples_per_prompt
        )
        assert sampled == demo.train.stage2_steps * demo.traces_per_step
        return
    total = ablation.train.stage1_steps + ablation.train.stage2_steps
    assert total == demo.train.stage1_steps + demo.train.stage2_steps


def test_pinned_roles_need_disjoint_cores():
    with pytest.raises(ConfigError, match=r"learner\.cpu_cores: must not overlap"):
        load_config(None, ["rollout.cpu_cores=[0,1]", "learner.cpu_cores=[1]"])
    cfg = load_config(None, ["rollout.cpu_cores=[0]", "learner.cpu_cores=[1]"])
    assert cfg.rollout.cpu_cores == [0] and cfg.learner.cpu_cores == [1]


def test_one_step_off_is_refused_when_colocated():
    with pytest.raises(ConfigError, match=r"train\.max_staleness: must be 0 with rollout"):
        load_config(None, ["train.max_staleness=1", "rollout.colocate_with_learner=true"])


def test_token_budget_lifts_the_micro_batch_split():
    # 8 x 4 = 32 traces do not split into micro-batches of 5, but a token budget packs any count
    with pytest.raises(ConfigError, match=r"train\.prompts_per_step"):
        load_config(None, ["learner.micro_batch_size=5"])
    load_config(None, ["learner.micro_batch_size=5", "learner.max_tokens_per_micro_batch=2048"])
