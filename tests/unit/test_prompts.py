"""Prompt building: spliced token ids equal the chat template's own rendering."""

import pytest
from transformers import AutoTokenizer

from score_ray.config import Config, PromptConfig, PromptExample
from score_ray.models import build_tiny_model
from score_ray.prompts import PromptBuilder


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(build_tiny_model(Config().model.cache_dir))


def _render(tokenizer, messages):
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def test_splice_equals_template_rendering(tokenizer):
    builder = PromptBuilder(tokenizer, PromptConfig())
    question = "What is 3 + 4?"
    prompt = builder.first_prompt_ids(question)
    assert prompt == _render(tokenizer, builder.first_messages(question))

    answer_text = "3 + 4 = 7\n<answer>7</answer>"
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    attempt1 = tokenizer.encode(answer_text, add_special_tokens=False) + [im_end]
    spliced = prompt + attempt1 + builder.bridge_ids(attempt1)
    conversation = [
        *builder.first_messages(question),
        {"role": "assistant", "content": answer_text},
        {"role": "user", "content": PromptConfig().correction},
    ]
    assert tokenizer.decode(spliced) == tokenizer.decode(_render(tokenizer, conversation))


def test_repeated_bridges_equal_the_template_rendering_of_k_attempts(tokenizer):
    """Attempt 4 of a K-attempt evaluation: the bridge spliced after every attempt (one of
    them cut off at the token budget) renders as the whole 3-attempt conversation."""
    builder = PromptBuilder(tokenizer, PromptConfig())
    question = "What is 3 + 4?"
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    texts = ["3 + 4 = 8\n<answer>8</answer>", "Let me check: 3 + 4 = 7", "<answer>7</answer>"]
    ended = [True, False, True]  # attempt 2 hit the token budget: no end-of-turn token
    spliced = builder.first_prompt_ids(question)
    for text, stop in zip(texts, ended, strict=True):
        attempt = tokenizer.encode(text, add_special_tokens=False) + ([im_end] if stop else [])
        spliced += attempt + builder.bridge_ids(attempt)
    rendered = _render(tokenizer, builder.conversation(question, texts))
    assert tokenizer.decode(spliced) == tokenizer.decode(rendered)


def test_cut_off_attempt_gets_its_turn_closed(tokenizer):
    builder = PromptBuilder(tokenizer, PromptConfig())
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ended = builder.bridge_ids([5, 6, im_end])
    cut_off = builder.bridge_ids([5, 6, 7])
    assert cut_off[0] == im_end and cut_off[1:] == ended
    assert builder.max_bridge_len() == len(cut_off)


def test_bridge_does_not_depend_on_attempt1_content(tokenizer):
    # The instruction must carry no hint of whether attempt 1 was right.
    builder = PromptBuilder(tokenizer, PromptConfig())
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    right = tokenizer.encode("<answer>7</answer>", add_special_tokens=False) + [im_end]
    wrong = tokenizer.encode("<answer>8</answer>", add_special_tokens=False) + [im_end]
    assert builder.bridge_ids(right) == builder.bridge_ids(wrong)
    text = tokenizer.decode(builder.bridge_ids(right)).lower()
    assert "incorrect" not in text and "is wrong" not in text and "is right" not in text


def test_system_prompt_and_custom_wording(tokenizer):
    prompts = PromptConfig(system="Be brief.", attempt1="Q: {question}", correction="Check again.")
    builder = PromptBuilder(tokenizer, prompts)
    text = tokenizer.decode(builder.first_prompt_ids("1+1?"))
    assert "Be brief." in text and "Q: 1+1?" in text
    assert "Check again." in tokenizer.decode(builder.bridge_ids([5]))


def test_tokenizer_without_chat_template_is_rejected(tokenizer):
    class NoTemplate:
        chat_template = None

    with pytest.raises(ValueError, match="chat template"):
        PromptBuilder(NoTemplate(), PromptConfig())


def test_few_shot_examples_are_earlier_turns_of_the_template(tokenizer):
    examples = [PromptExample("1+1?", "2\n<answer>2</answer>"), PromptExample("2+5?", "7")]
    builder = PromptBuilder(tokenizer, PromptConfig(examples=examples, attempt1="Q: {question}"))
    messages = builder.first_messages("3+4?")
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[0]["content"] == "Q: 1+1?" and messages[1]["content"] == "2\n<answer>2</answer>"
    assert builder.first_prompt_ids("3+4?") == _render(tokenizer, messages)
    # The bridge is still the template's text after attempt 1, examples or not.
    plain = PromptBuilder(tokenizer, PromptConfig(attempt1="Q: {question}"))
    assert builder.bridge_ids([5]) == plain.bridge_ids([5])
