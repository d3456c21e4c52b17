"""Binary rewards: extract the final answer from a completion and check it against a Problem.

The completion is untrusted model output and is treated as hostile: whatever it contains,
`score_completion` returns 0.0 or 1.0 and never raises for it. It does raise ValueError for
programming errors (an unknown answer format or task source, a misconfigured dataset), which
must not be silently turned into zero rewards.

Scoring runs in Ray actor threads, where signal-based timeouts cannot work, so math-verify's
own timeouts are disabled; the verifier pool enforces a per-item deadline instead. Some inputs
(e.g. `9^{9^{9^{9}}}` for sympy) spin in C code that no in-thread timeout can interrupt, so that
deadline must be able to abandon or kill the worker, not just wait.

Code tasks (HumanEval, MBPP) are scored by running the extracted program in the sandbox
(`score_ray.verify.sandbox`): an unprivileged, resource-limited process with no network and a
private filesystem, called by the problem's tests from a second sandboxed process through
proxies that pass only plain data. Scoring is only called from the Verifier actors, so
model-written code never runs in the driver, the learners or the rollout workers.

`answer_agreement` turns the same scorers into an answer-to-answer equivalence for the
majority vote of `score-ray eval --parallel` (`score_ray.scaling.vote_keys`), which runs in
the driver: only on extracted math / reasoning-gym answers (never on code), and only on
answers the Verifier actors already scored without a timeout or error.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from score_ray.config import VerifierConfig
from score_ray.tasks.base import Problem
from score_ray.tasks.code import CODE_SOURCES, build_check
from score_ray.verify.canaries import suspicious
from score_ray.verify.sandbox import SandboxLimits, run_tests

ANSWER_FORMATS = ("answer_tag", "boxed", "code")
MAX_MATH_ANSWER_CHARS = 1_000
"""Longer extracted math answers score 0 without parsing: no real final answer is that long,
and sympy parsing time grows steeply with length."""
MAX_GYM_ANSWER_CHARS = 10_000
"""reasoning-gym answers can be long (ARC grids, sorted lists), but not unboundedly."""

_OPEN_TAG = re.compile(r"<answer>", re.IGNORECASE)
_CLOSE_TAG = re.compile(r"</answer>", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\s*\{")
_PYTHON_TAGS = ("python", "py", "python3")
MAX_CODE_CHARS = 50_000
"""Longer extracted programs score 0 without running: far beyond any generation budget."""
_VERIFIER_DEFAULTS = VerifierConfig()


def extract_answer(text: str, answer_format: str) -> str | None:
    """The final answer in `text`, stripped, or None if there is none.

    answer_tag: the content after the LAST `<answer>` (case-insensitive), up to the next
        `</answer>`. If that last tag is never closed there is no answer, not even an earlier
        closed one: a completion cut off at the token budget as `<answer>1` (the model was
        writing 12) must not earn credit for a prefix.
    boxed: the content of the last complete `\\boxed{...}` (by closing position), with braces
        balanced; `\\{` and `\\}` are literal braces. If the last `\\boxed{` is never
        closed there is no answer (as for answer_tag).
    code: the last fenced python block (see `extract_code`), indentation kept, not stripped.
    Runs in linear time, so adversarially long completions cannot stall it.
    """
    if answer_format == "code":
        return extract_code(text)
    if answer_format == "answer_tag":
        answer = _extract_answer_tag(text)
    elif answer_format == "boxed":
        answer = _extract_boxed(text)
    else:
        raise ValueError(
            f"prompts.answer_format: must be one of {list(ANSWER_FORMATS)}, got {answer_format!r}"
        )
    if answer is None:
        return None
    answer = answer.strip()
    return answer or None


def _extract_answer_tag(text: str) -> str | None:
    last_open = None
    for last_open in _OPEN_TAG.finditer(text):  # noqa: B007 - we want the last match
        pass
    if last_open is None:
        return None
    close = _CLOSE_TAG.search(text, last_open.end())
    # An unclosed last tag is a cut-off answer; an earlier closed one was superseded.
    return None if close is None else text[last_open.end() : close.start()]


def _extract_boxed(text: str) -> str | None:
    # One left-to-right pass with a stack of open braces: `True` marks a `\boxed{` brace.
    boxed_opens = {match.end() - 1 for match in _BOXED.finditer(text)}
    stack: list[tuple[int, bool]] = []
    best: tuple[int, int] | None = None  # (start, end) of the content closed last
    closed: set[int] = set()  # positions of the `\boxed{` braces that were closed
    index, length = 0, len(text)
    while index < length:
        char = text[index]
        if char == "\\":
            index += 2  # an escaped character, e.g. \{ or \}, is never structural
            continue
        if char == "{":
            stack.append((index, index in boxed_opens))
        elif char == "}" and stack:
            start, is_boxed = stack.pop()
            if is_boxed:
                best = (start + 1, index)
                closed.add(start)
        index += 1
    if best is None or max(boxed_opens) not in closed:
        return None  # the last \boxed{ was cut off: no credit for a prefix (see answer_tag)
    return text[best[0] : best[1]]


def extract_code(text: str) -> str | None:
    """The code in the last ```python block of `text`, or None.

    A fence is a line starting with ``` (after optional indentation); its first word is the
    language. The last block tagged python/py/python3 wins; if no block is tagged, the last
    untagged block; blocks in other languages (```text, ```output) are never code. A final
    block left unclosed at the end of the text (generation hit its token budget) counts, up
    to the end. There is no fallback to the whole text: code outside a block is not an
    answer, just as a number outside <answer> tags is not. Leading and trailing blank lines
    are dropped; indentation is kept (a HumanEval answer may be just the function body).
    """
    tagged: list[str] | None = None
    untagged: list[str] | None = None
    current: list[str] | None = None
    for line in text.split("\n"):
        stripped = line.strip()
        if current is not None:
            if stripped.startswith("```"):
                current = None
            else:
                current.append(line.rstrip("\r"))
        elif stripped.startswith("```"):
            words = stripped[3:].split(maxsplit=1)
            language = words[0].lower() if words else ""
            current = []
            if language in _PYTHON_TAGS:
                tagged = current
            elif not language:
                untagged = current
    lines = tagged if tagged is not None else untagged
    if lines is None:
        return None
    code = "\n".join(lines).strip("\n")
    return code if code.strip() else None


def score_completion(
    problem: Problem,
    completion: str,
    answer_format: str,
    *,
    sandbox_timeout_s: float = _VERIFIER_DEFAULTS.sandbox_timeout_s,
    sandbox_memory_mb: int = _VERIFIER_DEFAULTS.sandbox_memory_mb,
) -> float:
    """1.0 if the completion's final answer is correct for `problem`, else 0.0.

    Code problems run in the sandbox with a wall-clock limit of `sandbox_timeout_s` (and as
    many CPU seconds) and `sandbox_memory_mb` of address space.
    """
    source = problem.meta.get("source")
    if source in CODE_SOURCES:
        return _score_code(problem, completion, answer_format, sandbox_timeout_s, sandbox_memory_mb)
    answer = extract_answer(completion, answer_format)
    if source == "reasoning_gym":
        return _score_reasoning_gym(problem, answer)
    if source == "math_jsonl":
        return _score_math(problem.answer, answer)
    raise ValueError(f"problem {problem.uid}: unknown task source {source!r} in meta")


def answer_agreement(problem: Problem) -> Callable[[str, str], bool] | None:
    """agree(a, b) for the majority vote over `problem`'s sampled answers: whether the
    verifier, with answer `a` in the gold answer's seat, accepts answer `b`; None for code
    problems (programs vote by their text).

    math: `_score_math(a, b)`, the very comparison rewards use (math-verify), so "0.5",
        "1/2" and "\\frac{1}{2}" agree. What math-verify cannot parse as math it compares as
        text, as it does for rewards; an answer scored 0 unread (empty, over
        MAX_MATH_ANSWER_CHARS) does not even agree with itself, so it casts no vote.
    reasoning-gym: the dataset's own scorer with `a` as the entry's answer, asked both ways
        (basic_arithmetic's exact match: "-053" and "-53" do not agree, nor "7." and "7").
        Both ways because some scorers read the gold from elsewhere in the entry: then
        agreement means both are right, which merges only answers of one reward.
    Exceptions from hostile input count as disagreement in `vote_keys`.
    """
    source = problem.meta.get("source")
    if source == "math_jsonl":
        return lambda a, b: _score_math(a, b) == 1.0
    if source == "reasoning_gym":

        def agree(a: str, b: str) -> bool:
            return a == b or (_gym_accepts(problem, a, b) and _gym_accepts(problem, b, a))

        return agree
    return None


def _gym_accepts(problem: Problem, gold: str, answer: str) -> bool:
    """reasoning-gym's scorer for `problem` with `gold` as the entry's answer."""
    entry = {**problem.meta["entry"], "answer": gold}  # a str encodes as itself
    swapped = dataclasses.replace(problem, meta={**problem.meta, "entry": entry})
    return _score_reasoning_gym(swapped, answer) == 1.0


def _score_code(
    problem: Problem, completion: str, answer_format: str, timeout_s: float, memory_mb: int
) -> float:
    """1.0 only if the extracted program passes every test of the problem in the sandbox."""
    if answer_format != "code":  # a config bug, not model output: raise
        raise ValueError(
            f"prompts.answer_format: {problem.meta.get('source')} problems need 'code', "
            f"got {answer_format!r}"
        )
    code = extract_code(completion)
    if code is None or len(code) > MAX_CODE_CHARS:
        return 0.0
    limits = SandboxLimits(cpu_s=max(1, math.ceil(timeout_s)), memory_mb=memory_mb)
    check = build_check(problem, code)
    result = run_tests(
        check.candidate, check.tests, timeout_s, limits, setup=check.setup, calls=check.calls
    )
    return 1.0 if result.passed else 0.0


def completion_canaries(problem: Problem, completion: str, answer_format: str) -> tuple[str, ...]:
    """The reward-hack canaries (`score_ray.verify.canaries`) the completion's code trips;
    () for a problem that is not answered with code, or a completion without code."""
    if problem.meta.get("source") not in CODE_SOURCES or answer_format != "code":
        return ()
    code = extract_code(completion)
    return suspicious(code) if code is not None else ()


def _score_reasoning_gym(problem: Problem, answer: str | None) -> float:
    """reasoning-gym's own scorer for the dataset, made binary (as in the paper)."""
    # Our own metadata: errors here are bugs or a bad config, so let them raise.
    from score_ray.tasks.reasoning_gym_source import decode_entry

    meta = problem.meta
    score_answer = _gym_scorer(meta["dataset"], json.dumps(meta.get("params", {}), sort_keys=True))
    entry = decode_entry(meta["entry"])
    if answer is None or len(answer) > MAX_GYM_ANSWER_CHARS:
        return 0.0
    try:
        score = float(score_answer(answer, entry))
    except Exception:  # hostile answer broke the dataset's parser: wrong, not a crash
        return 0.0
    return 1.0 if score >= 1.0 else 0.0


@lru_cache(maxsize=64)
def _gym_scorer(name: str, params_json: str) -> Callable[[str, dict[str, Any]], float]:
    """The dataset's `score_answer`, built with the same params as the problems (some scorers
    read their config), cached per dataset and params."""
    from score_ray.tasks.reasoning_gym_source import create_dataset, decode_entry

    params = decode_entry(json.loads(params_json))
    return create_dataset(name, params).score_answer


def _score_math(gold: str, answer: str | None) -> float:
    """math-verify equivalence of the extracted answer and the gold answer."""
    if answer is None or len(answer) > MAX_MATH_ANSWER_CHARS:
        return 0.0
    try:
        gold_parsed = list(_parse_gold(gold))
        predicted = _parse_math(answer)
        if not gold_parsed or not predicted:
            return 0.0
        return 1.0 if _math_verify().verify(gold_parsed, predicted, timeout_seconds=None) else 0.0
    except Exception:  # sympy / latex2sympy can raise anything on odd input
        return 0.0


@lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> tuple[Any, ...]:
    """Gold answers repeat across samples and steps: parse each once (sympy objects are
    immutable, so sharing them is safe)."""
    return tuple(_parse_math(gold))


def _parse_math(expression: str) -> list[Any]:
    # Wrapped in \boxed{} so math-verify's LaTeX extractor takes the whole string as the
    # answer (bare "1/2" and "\frac{1}{2}" both parse); parsing_timeout=None disables its
    # SIGALRM timeout, which raises outside the main thread.
    return _math_verify().parse("\\boxed{" + expression + "}", parsing_timeout=None)


@lru_cache(maxsize=1)
def _math_verify() -> Any:
    """math_verify, imported on first use (it pulls in sympy; import is slow)."""
    import logging

    import math_verify

    # With timeouts off, math-verify logs a warning on first use; we enforce our own deadline.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return math_verify
