"""Two-attempt traces and their padded tensor form with per-attempt token masks.

A trace is one conversation, laid out as a single token sequence so that the
learner scores both attempts in one forward pass:

    [ prompt (x1) | attempt 1 (y1) | bridge | attempt 2 (y2) ]

`bridge` is what the chat template puts between the two attempts: the end of
the assistant turn, the self-correction instruction as a user turn, and the
next assistant header. Because attempt 2 is generated from exactly these token
ids, the learner sees the very tokens the sampler conditioned on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Attempt:
    """One generated attempt, as the rollout engine returned it."""

    ids: list[int]
    logprobs: list[float]
    """Log-prob of each token under the distribution it was sampled from (at its temperature)."""
    text: str
    truncated: bool = False
    """Generation stopped at the token budget (rollout.max_new_tokens), not at end of turn."""

    def to_json(self) -> dict:
        return {
            "ids": self.ids,
            "logprobs": self.logprobs,
            "text": self.text,
            "truncated": self.truncated,
        }

    @classmethod
    def from_json(cls, row: dict) -> Attempt:
        return cls(list(row["ids"]), list(row["logprobs"]), row["text"], bool(row["truncated"]))


@dataclass
class Trace:
    """One two-attempt rollout, as produced by a RolloutWorker."""

    problem_uid: str
    prompt_ids: list[int]
    attempt1_ids: list[int]
    bridge_ids: list[int]
    attempt2_ids: list[int]
    attempt1_text: str
    attempt2_text: str
    attempt1_logprobs: list[float] = field(default_factory=list)
    """Sampling log-probs of attempt-1 tokens under the rollout engine."""
    attempt2_logprobs: list[float] = field(default_factory=list)
    weight_version: int = 0
    """Version of the policy weights that generated this trace (its attempt 2, and its
    attempt 1 unless `attempt1_offline`)."""
    attempt1_truncated: bool = False
    """Attempt 1 stopped at the token budget."""
    attempt2_truncated: bool = False
    attempt1_offline: bool = False
    """Attempt 1 came from the offline pool (base model), not from the current policy."""

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.attempt1_ids + self.bridge_ids + self.attempt2_ids

    @property
    def num_generated(self) -> int:
        return len(self.attempt1_ids) + len(self.attempt2_ids)


@dataclass
class TraceBatch:
    """Right-padded tensors for a list of traces. B = traces, T = longest sequence."""

    input_ids: torch.Tensor  # [B, T] long, padded with pad_id
    attention_mask: torch.Tensor  # [B, T] long, 1 on real tokens
    attempt1_mask: torch.Tensor  # [B, T] float, 1 on attempt-1 tokens
    attempt2_mask: torch.Tensor  # [B, T] float, 1 on attempt-2 tokens
    behaviour_logprobs: torch.Tensor  # [B, T] float, the sampler's log-prob of each attempt
    # token (at its temperature), 0 elsewhere: the behaviour policy of the importance ratio

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def slice(self, start: int, stop: int) -> TraceBatch:
        return TraceBatch(*(tensor[start:stop] for tensor in vars(self).values()))

    def select(self, rows: list[int]) -> TraceBatch:
        """The rows `rows`, in that order (a packed micro-batch)."""
        index = torch.tensor(rows, dtype=torch.long)
        return TraceBatch(*(tensor[index] for tensor in vars(self).values()))

    def lengths(self) -> list[int]:
        """Unpadded token count of each row."""
        return self.attention_mask.sum(-1).tolist()


def collate_traces(traces: list[Trace], pad_id: int) -> TraceBatch:
    """Pad traces to one length and mark which positions belong to which attempt."""
    lengths = [len(t.token_ids) for t in traces]
    batch, longest = len(traces), max(lengths)
    input_ids = torch.full((batch, longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, longest), dtype=torch.long)
    attempt1_mask = torch.zeros((batch, longest))
    attempt2_mask = torch.zeros((batch, longest))
    behaviour = torch.zeros((batch, longest))
    for row, trace in enumerate(traces):
        ids = trace.token_ids
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
        start1 = len(trace.prompt_ids)
        end1 = start1 + len(trace.attempt1_ids)
        start2 = end1 + len(trace.bridge_ids)
        end2 = start2 + len(trace.attempt2_ids)
        attempt1_mask[row, start1:end1] = 1.0
        attempt2_mask[row, start2:end2] = 1.0
        for start, stop, logprobs in (
            (start1, end1, trace.attempt1_logprobs),
            (start2, end2, trace.attempt2_logprobs),
        ):
            if logprobs:  # hand-built traces may carry none: 0 there
                if len(logprobs) != stop - start:
                    raise ValueError(
                        f"trace of {trace.problem_uid}: {len(logprobs)} sampling log-probs for "
                        f"{stop - start} attempt tokens"
                    )
                behaviour[row, start:stop] = torch.tensor(logprobs)
    return TraceBatch(input_ids, attention_mask, attempt1_mask, attempt2_mask, behaviour)
