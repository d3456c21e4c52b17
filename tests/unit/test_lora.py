"""LoRA (issue 14): the learner.lora config section, the merge math on hand-worked matrices,
and the merged weights of a peft-wrapped tiny Llama against peft's own merge."""

from __future__ import annotations

import pytest
import torch

from score_ray.config import ConfigError, load_config
from score_ray.learner.lora import (
    base_parameter_name,
    base_parameter_shapes,
    is_adapter_parameter,
    merged_named_parameters,
    merged_weight,
    trainable_parameters,
    wrap_with_lora,
)

# -- config ---------------------------------------------------------------------------------


def test_lora_is_off_by_default():
    cfg = load_config(None, [])
    assert cfg.learner.lora.rank == 0 and cfg.learner.lora.sync == "merged"


def test_lora_section_loads():
    cfg = load_config(
        None,
        [
            "learner.lora.rank=8",
            "learner.lora.alpha=32",
            "learner.lora.target_modules=[q_proj,v_proj]",
            "learner.lora.dropout=0.05",
        ],
    )
    lora = cfg.learner.lora
    assert (lora.rank, lora.alpha, lora.target_modules, lora.dropout) == (
        8,
        32.0,
        ["q_proj", "v_proj"],
        0.05,
    )


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["learner.lora.rank=-1"], "learner.lora.rank"),
        (["learner.lora.rank=4", "learner.lora.alpha=0"], "learner.lora.alpha"),
        (["learner.lora.rank=4", "learner.lora.dropout=1.0"], "learner.lora.dropout"),
        (["learner.lora.rank=4", "learner.lora.target_modules=[]"], "learner.lora.target_modules"),
        (
            ["learner.lora.rank=4", "learner.lora.target_modules=[q_proj,q_proj]"],
            "learner.lora.target_modules",
        ),
        (["learner.lora.rank=4", "learner.lora.sync=bogus"], "learner.lora.sync"),
        (["learner.lora.rank=4", "learner.zero_stage=3"], "learner.lora.rank"),
        (["learner.lora.rnak=4"], "learner.lora.rnak"),
    ],
)
def test_bad_lora_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, overrides)


def test_lora_off_ignores_its_other_keys():
    load_config(None, ["learner.lora.rank=0", "learner.lora.alpha=-1", "learner.zero_stage=3"])


# -- merge math -----------------------------------------------------------------------------


def test_merged_weight_by_hand():
    # W [2, 3], r = 1: A [1, 3] = [1 2 3], B [2, 1] = [1; -1], scale = alpha / r = 0.5
    # B @ A = [[1 2 3], [-1 -2 -3]];  W + 0.5 * B @ A:
    weight = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    lora_a = torch.tensor([[1.0, 2.0, 3.0]])
    lora_b = torch.tensor([[1.0], [-1.0]])
    merged = merged_weight(weight, lora_a, lora_b, scale=0.5)
    assert torch.equal(merged, torch.tensor([[1.5, 1.0, 1.5], [-0.5, 0.0, -1.5]]))
    assert torch.equal(weight, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))  # untouched


def test_merged_weight_rank_two_and_fan_in_fan_out():
    # r = 2: A = I_2 (in = 2), B = [[1 2], [3 4]] -> B @ A = B; scale 2 -> W + 2B
    weight = torch.zeros(2, 2)
    lora_a = torch.eye(2)
    lora_b = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert torch.equal(
        merged_weight(weight, lora_a, lora_b, 2.0), torch.tensor([[2.0, 4.0], [6.0, 8.0]])
    )
    # W stored [in, out]: the delta is transposed
    assert torch.equal(
        merged_weight(weight, lora_a, lora_b, 2.0, fan_in_fan_out=True),
        torch.tensor([[2.0, 6.0], [4.0, 8.0]]),
    )


def test_merged_weight_keeps_dtype():
    weight = torch.ones(2, 2, dtype=torch.bfloat16)
    merged = merged_weight(weight, torch.ones(1, 2), torch.ones(2, 1), 1.0)
    assert merged.dtype == torch.bfloat16 and torch.equal(merged.float(), torch.full((2, 2), 2.0))


def test_parameter_names():
    name = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    assert base_parameter_name(name) == "model.layers.0.self_attn.q_proj.weight"
    assert base_parameter_name("base_model.model.lm_head.weight") == "lm_head.weight"
    assert is_adapter_parameter("base_model.model.model.layers.0.mlp.up_proj.lora_A.default.weight")
    assert not is_adapter_parameter(name)


# -- a peft-wrapped tiny Llama --------------------------------------------------------------


def _tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def _lora_config(rank: int = 2, alpha: float = 8.0):
    return load_config(
        None, [f"learner.lora.rank={rank}", f"learner.lora.alpha={alpha}"]
    ).learner.lora


def test_wrapped_policy_trains_only_the_adapter_and_starts_as_the_base():
    base = _tiny_llama()
    ids = torch.randint(0, 64, (2, 7))
    before = base(input_ids=ids).logits
    policy = wrap_with_lora(base, _lora_config())
    trainable = trainable_parameters(policy)
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all(is_adapter_parameter(n) for n in names)
    # B = 0 at the start: the policy is the base model
    assert torch.allclose(policy(input_ids=ids).logits, before, atol=1e-6)


def test_merged_parameters_match_peft_merge_and_leave_the_module_alone():
    policy = wrap_with_lora(_tiny_llama(), _lora_config())
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # a trained adapter
    ids = torch.randint(0, 64, (2, 7))
    adapted = policy(input_ids=ids).logits
    before = {n: p.clone() for n, p in policy.named_parameters()}

    merged = dict(merged_named_parameters(policy))
    assert [(n, list(t.shape)) for n, t in merged.items()] == base_parameter_shapes(policy)
    for name, param in policy.named_parameters():
        assert torch.equal(param, before[name])  # nothing merged in place

    # A plain Llama loaded with the merged weights computes what the adapted policy computes
    plain = _tiny_llama()
    missing, unexpected = plain.load_state_dict(merged, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied to the embedding
    assert torch.allclose(plain(input_ids=ids).logits, adapted, atol=1e-5)
    # and peft's own merge agrees
    reference = policy.merge_and_unload().state_dict()
    for name, tensor in merged.items():
        assert torch.allclose(tensor, reference[name], atol=1e-6), name


def test_disabled_adapter_is_the_base_model():
    base = _tiny_llama()
    ids = torch.randint(0, 64, (2, 7))
    expected = base(input_ids=ids).logits
    policy = wrap_with_lora(base, _lora_config())
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    assert not torch.allclose(policy(input_ids=ids).logits, expected, atol=1e-3)
    with policy.disable_adapter():
        assert torch.allclose(policy(input_ids=ids).logits, expected, atol=1e-6)


def test_non_linear_targets_are_refused():
    with pytest.raises(ValueError, match="target_modules"):
        wrap_with_lora(
            _tiny_llama(),
            load_config(
                None, ["learner.lora.rank=2", "learner.lora.target_modules=[embed_tokens]"]
            ).learner.lora,
        )


def test_vllm_max_lora_rank_is_the_smallest_that_fits():
    from score_ray.learner.lora import vllm_max_lora_rank

    assert [vllm_max_lora_rank(r) for r in (1, 2, 8, 9, 64)] == [1, 8, 8, 16, 64]
    with pytest.raises(ValueError, match="rank"):
        vllm_max_lora_rank(1000)


def test_adapter_sync_mode_configures_vllm_lora():
    from score_ray.rollout.worker import engine_kwargs, serves_adapter

    cfg = load_config(None, ["learner.lora.rank=4", "learner.lora.sync=adapter"])
    assert serves_adapter(cfg)
    kwargs = engine_kwargs(cfg, "/model", 0)
    assert (kwargs["enable_lora"], kwargs["max_loras"], kwargs["max_lora_rank"]) == (True, 1, 8)
    merged = load_config(None, ["learner.lora.rank=4"])
    assert not serves_adapter(merged) and "enable_lora" not in engine_kwargs(merged, "/m", 0)


def test_adapter_files_are_what_peft_loads(tmp_path):
    from peft import PeftModel

    from score_ray.learner.lora import adapter_files

    policy = wrap_with_lora(_tiny_llama(), _lora_config())
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    ids = torch.randint(0, 64, (2, 7))
    expected = policy(input_ids=ids).logits
    files = adapter_files(policy)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(files)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    loaded = PeftModel.from_pretrained(_tiny_llama(), str(tmp_path))
    assert torch.allclose(loaded(input_ids=ids).logits, expected, atol=1e-6)


def test_lora_reference_is_the_policy_itself_and_adapter_engines_keep_their_weights_asleep():
    """With LoRA there is no reference copy (the plan counts 0 bytes for it), and a colocated
    engine that serves adapters sleeps at level 1: level 2 drops the base weights, which an
    adapter sync never resends."""
    from score_ray.config import load_config
    from score_ray.learner.actor import (
        REFERENCE_ADAPTER_DISABLED,
        REFERENCE_RESIDENT,
        reference_placement,
    )
    from score_ray.plan import reference_bytes
    from score_ray.rollout.worker import sleep_level

    full = load_config(None, [])
    merged = load_config(None, ["learner.lora.rank=4"])
    adapter = load_config(None, ["learner.lora.rank=4", "learner.lora.sync=adapter"])
    assert reference_placement(full, on_gpu=False) == REFERENCE_RESIDENT
    assert reference_placement(merged, on_gpu=False) == REFERENCE_ADAPTER_DISABLED
    assert reference_bytes(full, 1000.0, on_gpu=False) == 1000.0
    assert reference_bytes(merged, 1000.0, on_gpu=False) == 0.0
    assert [sleep_level(c) for c in (full, merged, adapter)] == [2, 2, 1]
