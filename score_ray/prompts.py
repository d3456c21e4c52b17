"""Chat-templated token ids for the two attempts of a self-correction trace.

Attempt 1 is generated from the chat template applied to the first user turn.
Attempt 2 is generated from the token ids

    prompt (x1) + attempt 1 (y1, as sampled) + bridge

where `bridge` closes the assistant turn, adds the self-correction instruction
as a user turn and opens the next assistant turn, all rendered by the model's
own chat template. Splicing token ids (instead of re-rendering the whole chat
as text) guarantees that the learner scores exactly the tokens the sampler saw.

Attempt k+1 (evaluation with K attempts, `score_ray.evaluate.run_attempts`) is
the same splice repeated: x1 + y1 + bridge + y2 + bridge + ... + y_k + bridge,
which is the template's rendering of `conversation(question, [y1, ..., y_k])`.
"""

from __future__ import annotations

from typing import Any

from score_ray.config import PromptConfig

# A string no task text or template contains, to find where assistant content goes.
_SENTINEL = "\u2063SCORE_RAY_ATTEMPT_1\u2063"


class PromptBuilder:
    """Builds attempt-1 prompts and the attempt-1 -> attempt-2 bridge for one tokenizer."""

    def __init__(self, tokenizer: Any, prompts: PromptConfig) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the model's tokenizer has no chat template; SCoRe needs one")
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.stop_token_ids = _stop_token_ids(tokenizer)
        bridge_text = self._bridge_text()
        self._bridge_after_stop = self._encode(self._strip_turn_end(bridge_text))
        self._bridge_after_cutoff = self._encode(bridge_text)

    def first_messages(self, question: str) -> list[dict[str, str]]:
        """System message, few-shot exchanges, then the question as the user turn."""
        messages = []
        if self.prompts.system is not None:
            messages.append({"role": "system", "content": self.prompts.system})
        for example in self.prompts.examples:
            messages.append({"role": "user", "content": self._user_turn(example.question)})
            messages.append({"role": "assistant", "content": example.response})
        messages.append({"role": "user", "content": self._user_turn(question)})
        return messages

    def conversation(self, question: str, attempts: list[str]) -> list[dict[str, str]]:
        """The chat after `attempts` (assistant turns), each followed by the correction
        instruction: what attempt len(attempts) + 1 is generated from."""
        messages = self.first_messages(question)
        for attempt in attempts:
            messages.append({"role": "assistant", "content": attempt})
            messages.append({"role": "user", "content": self.prompts.correction})
        return messages

    def _user_turn(self, question: str) -> str:
        return self.prompts.attempt1.format(question=question)

    def first_prompt_ids(self, question: str) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            self.first_messages(question), add_generation_prompt=True, tokenize=False
        )
        return self._encode(text)

    def bridge_ids(self, attempt1_ids: list[int]) -> list[int]:
        """Tokens between attempt 1 and attempt 2. If attempt 1 ended with a stop
        token (the template's end of turn), the template's own end-of-turn text is
        not repeated; if it was cut off at the token budget, the turn is closed."""
        if attempt1_ids and attempt1_ids[-1] in self.stop_token_ids:
            return list(self._bridge_after_stop)
        return list(self._bridge_after_cutoff)

    def max_bridge_len(self) -> int:
        return max(len(self._bridge_after_stop), len(self._bridge_after_cutoff))

    def _bridge_text(self) -> str:
        rendered = self.tokenizer.apply_chat_template(
            self.conversation("question", [_SENTINEL]), add_generation_prompt=True, tokenize=False
        )
        if rendered.count(_SENTINEL) != 1:
            raise ValueError("chat template did not render the assistant turn verbatim")
        return rendered.split(_SENTINEL, 1)[1]

    def _strip_turn_end(self, bridge_text: str) -> str:
        for token_id in self.stop_token_ids:
            turn_end = self.tokenizer.decode([token_id])
            if turn_end and bridge_text.startswith(turn_end):
                return bridge_text[len(turn_end) :]
        return bridge_text

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))


def _stop_token_ids(tokenizer: Any) -> set[int]:
    """Token ids that end an assistant turn: eos plus the generation config's eos ids."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    for token in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id >= 0:
            ids.add(token_id)
    return ids
