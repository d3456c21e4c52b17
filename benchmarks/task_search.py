"""Search reasoning-gym tasks and prompts where a small model is neither hopeless nor perfect.

For each candidate (task name, task params, prompt variant) this runs greedy two-attempt
evaluation on held-out problems with ONE in-process vLLM engine, through score-ray's own
pieces, so the numbers are what the trainer's evaluation sees:

    load_task_splits (held-out split)  ->  PromptBuilder (chat template, correction bridge)
    ->  run_attempts (attempt 2 = x1 + y1 + bridge)  ->  score_completion (binary reward)

    nice -n 10 .venv/bin/python benchmarks/task_search.py                 # the SEARCH list
    nice -n 10 .venv/bin/python benchmarks/task_search.py --only gcd lcm --prompts work2 chat2 \
        --n 30 --max-tokens 64 --out /tmp/explore.json                      # exploring

Prompt variants: fixed ones (PROMPTS) and "chatK" / "workK": K solved examples of the task as
earlier chat turns (see `chat_prompts`).

Prints a table (Acc@t1, Acc@t2, format-hit rate = share of attempts with an extractable
answer, mean generated tokens per attempt) and writes benchmarks/results/task_search.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from score_ray.config import ModelConfig, PromptConfig, TaskConfig
from score_ray.evaluate import AttemptRun, attempt_metrics, run_attempts
from score_ray.prompts import PromptBuilder
from score_ray.tasks import load_task_splits
from score_ray.tasks.base import Problem
from score_ray.verify.scorers import extract_answer, score_completion

RESULTS = Path(__file__).resolve().parent / "results" / "task_search.json"

_CORRECTION = (
    "There might be an error in the solution above because of lack of understanding of the "
    "question. Please correct the error, if any, and rewrite the solution. "
)
_FEWSHOT = (
    "Q: What is 6 + 7?\nA: 6 + 7 = 13. <answer>13</answer>\n\n"
    "Q: Spell 'dog' backward.\nA: d-o-g backward is g-o-d. <answer>god</answer>\n\n"
    "Q: {question}\nA:"
)

PROMPTS: dict[str, PromptConfig] = {
    # The config default: step by step, then <answer>..</answer>.
    "default": PromptConfig(),
    # No step-by-step: a short reply and the tag, with an example of the tag.
    "tag_brief": PromptConfig(
        attempt1="{question}\n\nAnswer briefly. End with the final answer as "
        "<answer>ANSWER</answer>, for example <answer>5</answer>.",
        correction=_CORRECTION + "End with the final answer as <answer>ANSWER</answer>.",
    ),
    # Two question/answer examples inside the user turn.
    "tag_fewshot": PromptConfig(
        attempt1=_FEWSHOT,
        correction=_CORRECTION + "Write the final answer as <answer>ANSWER</answer>.",
    ),
    # The common math-instruct phrasing with \boxed{}.
    "boxed": PromptConfig(
        attempt1="{question}\n\nPlease reason step by step, and put your final answer within "
        "\\boxed{{}}.",
        correction=_CORRECTION + "Put your final answer within \\boxed{}.",
        answer_format="boxed",
    ),
}
"""Fixed prompts. Measured 2026-11 on basic_arithmetic: SmolLM2-135M-Instruct answers in
plain text ("4 - 1 = 3") and puts 0% of its answers in the asked format with any of these;
variants with a system-turn format instruction, a one-shot example in the user turn or
"only the answer" phrasing did the same and were dropped."""

# Example exchanges as earlier chat turns ("chatK" prompts): K solved problems of the same
# task (generated with another seed, answer only in tags). The current PromptConfig has
# only `system` and `attempt1`, so the turns are written into the system message with
# SmolLM2's ChatML markers, which its tokenizer reads as the special tokens: the token ids
# equal a real multi-turn chat (checked in `chat_prompts`). A `prompts.examples` field
# would express this without template markers.
SHOT_ATTEMPT1 = "{question}\n\nGive the final answer as <answer>ANSWER</answer>."
SHOT_CORRECTION = _CORRECTION + "Give the final answer as <answer>ANSWER</answer>."
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
SHOT_SEED_OFFSET = 7_777_777
"""Examples come from task.seed + this (eval uses task.seed, training task.seed + 1_000_003)."""
DEMO_EVAL_SIZE = 200
"""Examples never come from the first this-many held-out problems (a config's eval split)."""


def chat_prompts(examples: list[tuple[str, str]], tokenizer: Any) -> PromptConfig:
    """A PromptConfig whose system message carries `examples` (question, assistant reply)
    as earlier ChatML turns."""
    turns = "".join(
        f"<|im_end|>\n<|im_start|>user\n{SHOT_ATTEMPT1.format(question=q)}<|im_end|>\n"
        f"<|im_start|>assistant\n{reply}"
        for q, reply in examples
    )
    prompts = PromptConfig(
        system=SMOLLM2_SYSTEM + turns, attempt1=SHOT_ATTEMPT1, correction=SHOT_CORRECTION
    )
    messages = [{"role": "system", "content": SMOLLM2_SYSTEM}]
    for q, reply in examples:
        messages.append({"role": "user", "content": SHOT_ATTEMPT1.format(question=q)})
        messages.append({"role": "assistant", "content": reply})
    messages.append({"role": "user", "content": SHOT_ATTEMPT1.format(question="Q?")})
    chat = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    spliced = PromptBuilder(tokenizer, prompts).first_prompt_ids("Q?")
    if spliced != tokenizer.encode(chat, add_special_tokens=False):
        raise RuntimeError("chat-turn examples do not match the chat template's rendering")
    return prompts


_WORK_PATTERNS: dict[str, tuple[str, str]] = {
    # dataset: (regex on the question, one-line solution; {0} = the match, {a} = the answer)
    "basic_arithmetic": (r"Calculate (.*)\.$", "{0} = {a}"),
    "chain_sum": (r"problem: (.*) =$", "{0} = {a}"),
    "products": (r"multiplication: (.*)\. Give", "{0} = {a}"),
    "gcd": (r"numbers: (\d+), (\d+)\.", "The GCD of {0} and {1} is {a}."),
    "lcm": (r"numbers: (\d+), (\d+)$", "The LCM of {0} and {1} is {a}."),
    "letter_counting": (
        r'letter "(.)" appear',
        'The letter "{0}" appears {a} times.',
    ),
}


def reply(task: str, question: str, answer: str, worked: bool) -> str:
    """An example assistant reply: the answer in tags, after a one-line solution if
    `worked` (a mechanical one for the tasks in _WORK_PATTERNS, else "The answer is X.")."""
    tag = f"<answer>{answer}</answer>"
    if not worked:
        return tag
    pattern = _WORK_PATTERNS.get(task)
    match = re.search(pattern[0], question.strip()) if pattern else None
    if pattern and match:
        return pattern[1].format(*match.groups(), a=answer) + "\n" + tag
    return f"The answer is {answer}.\n{tag}"


def shot_examples(
    task: TaskConfig, k: int, exclude: set[str], worked: bool
) -> list[tuple[str, str]]:
    """k (question, reply) examples of the task, generated apart from its splits."""
    shots = dataclasses.replace(task, seed=task.seed + SHOT_SEED_OFFSET, eval_size=k + 8)
    pool = [p for p in load_task_splits(shots).eval if p.question not in exclude]
    return [(p.question, reply(task.name, p.question, p.answer, worked)) for p in pool[:k]]


@dataclass
class Candidate:
    task: str
    params: dict[str, Any]
    prompt: str
    label: str = ""
    """Short name of the task and params, for the table."""


_ARITH_1D = {
    "min_terms": 2,
    "max_terms": 2,
    "min_digits": 1,
    "max_digits": 1,
    "operators": ["+", "-"],
    "allow_parentheses": False,
    "allow_negation": False,
}

TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "arith1d+-": ("basic_arithmetic", _ARITH_1D),
    "arith1d*": ("basic_arithmetic", {**_ARITH_1D, "operators": ["*"]}),
    "arith1d+-*": ("basic_arithmetic", {**_ARITH_1D, "operators": ["+", "-", "*"]}),
    "arith2d+-": ("basic_arithmetic", {**_ARITH_1D, "max_digits": 2}),
    "chain_sum2x1d": ("chain_sum", {"min_terms": 2, "max_terms": 2, "max_digits": 1}),
    "chain_sum2x2d": ("chain_sum", {"min_terms": 2, "max_terms": 2, "max_digits": 2}),
    "products1d": ("products", {"min_terms": 2, "max_terms": 2, "max_digits": 1}),
    "gcd<=20": ("gcd", {"max_value": 20}),
    "lcm<=10": ("lcm", {"max_value": 10}),
    "legs1-2": ("leg_counting", {"min_animals": 1, "max_animals": 2, "max_instances": 3}),
    "letters3-5w": ("letter_counting", {"min_words": 3, "max_words": 5}),
    "spell_back3-4": ("spell_backward", {"min_word_len": 3, "max_word_len": 4}),
    "wordrev3": ("word_sequence_reversal", {"min_words": 3, "max_words": 3}),
    "wordsort3": (
        "word_sorting",
        {"min_words": 3, "max_words": 3, "min_word_length": 3, "max_word_length": 6},
    ),
    "eq2<=10": (
        "simple_equations",
        {"min_terms": 2, "max_terms": 2, "max_value": 10, "operators": ["+", "-"]},
    ),
    "countbits<=16": ("count_bits", {"max_n": 16}),
    "numfmt2": ("number_format", {"max_num_candidates": 2, "max_n": 10000}),
}

SEARCH = (
    ("arith2d+-", "default"),
    ("arith2d+-", "work2"),
    ("chain_sum2x2d", "work2"),
    ("gcd<=20", "work2"),
)
"""The default run: the config's default prompt as the baseline, then the three best
candidates of exploratory runs (n=30). It took 41 min on 2026-11-21 on the shared 2-core dev
VM (load average 4-20 from other jobs, this at nice 10); the baseline's longer replies take
the most."""


def candidates(only: list[str] | None, prompts: list[str] | None) -> list[Candidate]:
    """SEARCH, or the tasks whose label or dataset name matches `only` (all if unset),
    each with every variant in `prompts` (SEARCH's variants for the task if unset)."""
    if not only and not prompts:
        return [Candidate(*TASKS[label], prompt, label) for label, prompt in SEARCH]
    todo = []
    for label, (task, params) in TASKS.items():
        if only and not any(key in (label, task) for key in only):
            continue
        variants = prompts or [prompt for name, prompt in SEARCH if name == label] or ["work2"]
        todo += [Candidate(task, params, prompt, label) for prompt in variants]
    return todo


@dataclass
class Row:
    label: str
    task: str
    params: dict[str, Any]
    prompt: str
    n: int
    metrics: dict[str, float]
    format_hit: list[float]
    mean_tokens: list[float]
    seconds: float
    prompt_config: dict[str, Any] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # On a shared few-core machine one unbound OpenMP thread is ~2x faster than vLLM's
    # default of one bound thread per core (threads spin at barriers while descheduled).
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    todo = candidates(args.only, args.prompts)
    if not todo:
        print("no candidate matches", file=sys.stderr)
        return 2
    engine = Engine(args.model, args.max_tokens, args.max_model_len)
    rows = []
    for candidate in todo:
        row = evaluate_candidate(engine, candidate, args.n, args.attempts, args.task_seed)
        rows.append(row)
        print(_format_row(row), flush=True)
        _write_json(args, rows, engine)  # after every row: a partial search is kept
    print()
    print(format_table(rows))
    print(f"wrote {args.out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n", type=int, default=100, help="held-out problems per candidate")
    parser.add_argument("--attempts", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128, help="per attempt")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--task-seed", type=int, default=0, help="task.seed of the split")
    parser.add_argument("--only", nargs="*", help="task labels (TASKS) or dataset names")
    parser.add_argument(
        "--prompts", nargs="*", help=f"variants: {sorted(PROMPTS)}, chatK or workK (K examples)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


class Engine:
    """One greedy vLLM engine, shared by all candidates."""

    def __init__(self, model: str, max_tokens: int, max_model_len: int) -> None:
        from vllm import LLM

        from score_ray.models import resolve_model_path

        self.model_path = resolve_model_path(dataclasses.replace(ModelConfig(), path=model))
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len
        self.llm = LLM(
            model=self.model_path,
            dtype="bfloat16",
            max_model_len=max_model_len,
            enforce_eager=True,
            enable_prefix_caching=True,
            seed=0,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def sampler(self, stop_token_ids: set[int]):
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(
            temperature=0.0,
            max_tokens=self.max_tokens,
            stop_token_ids=sorted(stop_token_ids),
        )

        def sample(prompts: list[list[int]]) -> list[tuple[list[int], str]]:
            requests = [TokensPrompt(prompt_token_ids=ids) for ids in prompts]
            results = self.llm.generate(requests, params, use_tqdm=False)
            return [(list(r.outputs[0].token_ids), r.outputs[0].text) for r in results]

        return sample


def evaluate_candidate(
    engine: Engine, candidate: Candidate, n: int, attempts: int, task_seed: int
) -> Row:
    """Greedy `attempts`-attempt evaluation of one candidate on `n` held-out problems."""
    started = time.perf_counter()
    task = TaskConfig(
        name=candidate.task, params=candidate.params, train_size=1, eval_size=n, seed=task_seed
    )
    held_out = load_task_splits(task).eval
    prompts = make_prompts(candidate.prompt, task, held_out, engine.tokenizer)
    builder = PromptBuilder(engine.tokenizer, prompts)
    problems = _fitting(held_out, builder, engine, attempts)
    first = [builder.first_prompt_ids(p.question) for p in problems]
    runs = run_attempts(first, attempts, engine.sampler(builder.stop_token_ids), builder.bridge_ids)
    rewards = [
        [
            score_completion(p, run.completions[k][1], prompts.answer_format)
            for p, run in zip(problems, runs, strict=True)
        ]
        for k in range(attempts)
    ]
    return Row(
        label=candidate.label,
        task=candidate.task,
        params=candidate.params,
        prompt=candidate.prompt,
        n=len(problems),
        metrics=attempt_metrics(rewards) if attempts >= 2 else {"acc_t1": _mean(rewards[0])},
        format_hit=[_format_hits(runs, k, prompts.answer_format) for k in range(attempts)],
        mean_tokens=[_mean([len(run.completions[k][0]) for run in runs]) for k in range(attempts)],
        seconds=time.perf_counter() - started,
        prompt_config=dataclasses.asdict(prompts),
        examples=_examples(problems, runs, rewards),
    )


def make_prompts(
    variant: str, task: TaskConfig, held_out: list[Problem], tokenizer: Any
) -> PromptConfig:
    """A fixed prompt by name, or K examples of the task as earlier chat turns: "chatK"
    (replies are the tagged answer only) or "workK" (a one-line solution, then the tag)."""
    if variant in PROMPTS:
        return PROMPTS[variant]
    family, k = variant[:4], variant[4:]
    if family not in ("chat", "work") or not k.isdigit():
        raise ValueError(f"unknown prompt variant {variant!r}")
    # Keep examples out of the held-out split a config would use (eval_size 200), not only
    # out of the `n` problems measured here (the 2026-11 run excluded only those: its gcd
    # examples include a problem from held-out positions 101-200).
    wide = dataclasses.replace(task, eval_size=max(task.eval_size, DEMO_EVAL_SIZE))
    exclude = {p.question for p in [*held_out, *load_task_splits(wide).eval]}
    examples = shot_examples(task, int(k), exclude, worked=family == "work")
    return chat_prompts(examples, tokenizer)


def _fitting(
    problems: list[Problem], builder: PromptBuilder, engine: Engine, attempts: int
) -> list[Problem]:
    """The problems whose `attempts` attempts fit in the engine's context (as the trainer)."""
    budget = engine.max_model_len - attempts * engine.max_tokens
    budget -= (attempts - 1) * builder.max_bridge_len()
    return [p for p in problems if len(builder.first_prompt_ids(p.question)) <= budget]


def _format_hits(runs: list[AttemptRun], k: int, answer_format: str) -> float:
    return _mean([extract_answer(run.completions[k][1], answer_format) is not None for run in runs])


def _examples(
    problems: list[Problem], runs: list[AttemptRun], rewards: list[list[float]], count: int = 3
) -> list[dict[str, Any]]:
    return [
        {
            "question": problem.question,
            "answer": problem.answer,
            "attempts": [text for _, text in run.completions],
            "rewards": [row[i] for row in rewards],
        }
        for i, (problem, run) in enumerate(zip(problems[:count], runs, strict=False))
    ]


def _mean(values: list[float] | list[bool] | list[int]) -> float:
    return sum(values) / len(values) if values else 0.0


_HEADER = (
    f"{'task':<14} {'dataset':<22} {'prompt':<12} {'n':>4} {'Acc@t1':>7} {'Acc@t2':>7} "
    f"{'i->c':>6} {'c->i':>6} {'fmt1':>5} {'fmt2':>5} {'tok1':>5} {'tok2':>5} {'sec':>5}"
)


def _format_row(row: Row) -> str:
    m, fmt, tok = row.metrics, row.format_hit, row.mean_tokens
    fmt2 = fmt[1] if len(fmt) > 1 else float("nan")
    tok2 = tok[1] if len(tok) > 1 else float("nan")
    return (
        f"{row.label:<14} {row.task:<22} {row.prompt:<12} {row.n:>4} {m['acc_t1']:>7.2f} "
        f"{m.get('acc_t2', float('nan')):>7.2f} {m.get('delta_i2c', float('nan')):>6.2f} "
        f"{m.get('delta_c2i', float('nan')):>6.2f} {fmt[0]:>5.2f} {fmt2:>5.2f} "
        f"{tok[0]:>5.0f} {tok2:>5.0f} {row.seconds:>5.0f}"
    )


def format_table(rows: list[Row]) -> str:
    return "\n".join([_HEADER, *(_format_row(row) for row in rows)])


def _write_json(args: argparse.Namespace, rows: list[Row], engine: Engine) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "model": engine.model_path,
        "settings": {
            "n": args.n,
            "attempts": args.attempts,
            "max_tokens": args.max_tokens,
            "max_model_len": args.max_model_len,
            "task_seed": args.task_seed,
            "dtype": "bfloat16",
            "greedy": True,
        },
        "prompts": {name: dataclasses.asdict(cfg) for name, cfg in PROMPTS.items()},
        "rows": [dataclasses.asdict(row) for row in rows],
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
