"""`score-ray sft` through the real stack on the tiny model: Ray Train (TorchTrainer, 2 DDP
workers on gloo), RL's RolloutGroup (vLLM) and VerifierPool, a killed run that resumes; and
`score-ray train train.stage2_method=star`, STaR rounds after a real Stage I.

Both sample from the tiny model wired as a guessing bigram table, so that its own attempts
hold wrong and right answers. A round with too few examples (the random tiny model's lot)
is tested without Ray in tests/unit/test_star_stage2.py, from round data on disk."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from score_ray.launch import prepare_splits
from score_ray.sft.run import run_sft

from .conftest import CONF, tiny_config

SMALL_TRAINING = (
    "sft.num_workers=2",
    "sft.batch_size=4",
    "sft.micro_batch_size=2",
    "sft.checkpoint_every=2",
    "sft.min_examples=4",
    "sft.lr=1e-3",
)


@pytest.fixture(scope="module")
def guessing_model_path(tiny_model_path, tmp_path_factory) -> str:
    return build_guessing_model(tiny_model_path, tmp_path_factory.mktemp("guessing-model"))


def build_guessing_model(tiny_model_path: str, out: Path) -> str:
    """The tiny model rewired to answer every prompt `<answer>D</ANSWER>.` with a uniformly
    random digit D: right about 1 time in 10 on a one-digit answer, so its own samples hold
    wrong and right first attempts (and a few successful revisions) for SFT to train on."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    header_end = encode("\n")  # the last token of the assistant header
    opening, closing = encode("<answer>"), encode("</ANSWER>.")
    digits = [encode(str(d))[0] for d in range(10)]
    wired = header_end + opening + closing + digits
    assert len(wired) == len(set(wired))  # a bigram table needs distinct tokens
    # With attention and MLP outputs at zero, the last hidden state is the current token's
    # (normalised) embedding: the model is a bigram table. Chain tokens get orthogonal
    # embeddings; the untied head maps each to its successor with logit 20.
    hidden = model.config.hidden_size
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight.data.zero_()
        layer.mlp.down_proj.weight.data.zero_()
    embedding = model.model.embed_tokens.weight.data
    head = torch.zeros_like(embedding)
    chain = [*header_end, *opening, None, *closing, tokenizer.eos_token_id]
    basis = {}
    for token in [*header_end, *opening, *digits, *closing]:
        basis[token] = torch.zeros(hidden)
        basis[token][len(basis) - 1] = 1.0
        embedding[token] = basis[token] * hidden**0.5
    for current, following in itertools.pairwise(chain):
        sources = digits if current is None else [current]
        targets = digits if following is None else [following]
        for source in sources:
            for target in targets:
                head[target] += 20.0 * basis[source]
    model.config.tie_word_embeddings = False
    model.lm_head = torch.nn.Linear(hidden, head.shape[0], bias=False)
    model.lm_head.weight.data = head
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for name in ("generation_config.json",):
        (out / name).write_text((Path(tiny_model_path) / name).read_text())
    return str(out)


def test_pair_sft_on_self_generated_data_resumes_after_a_kill_and_loads_in_vllm(
    ray_local, guessing_model_path, tmp_path
):
    """Pair-SFT from the model's own first attempts (RL's rollout workers and verifiers) on 2
    DDP workers, a checkpoint every 2 steps: a worker dies after step 2; the re-run reads the
    round's examples back, resumes from that checkpoint, and final/ loads in transformers and
    in a vLLM rollout worker, with weights that moved."""
    import torch
    from transformers import AutoModelForCausalLM

    from score_ray.rollout.group import RolloutGroup

    cfg = tiny_config(
        tmp_path,
        f"model.path={guessing_model_path}",
        "task.params={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1, operators: ['+']}",
        "sft.method=pair_sft",
        "sft.problems_per_round=48",
        "sft.samples_per_prompt=8",
        "sft.epochs=2",
        *SMALL_TRAINING,
    )
    model_path, splits = prepare_splits(cfg)
    with pytest.raises(Exception, match="injected failure after step 2"):
        run_sft(cfg, model_path, splits.train, fail_after_step=2)
    assert not (tmp_path / "final").exists()
    data = json.loads((tmp_path / "rounds" / "round_0" / "data.json").read_text())
    assert data["samples"] == 48 * 8 and data["kept"] >= 4  # real wrong/right pairs
    examples = (tmp_path / "rounds" / "round_0" / "examples.jsonl").read_text()

    summary = run_sft(cfg, model_path, splits.train, fail_after_step=2)
    (report,) = summary["rounds"]
    assert report["trained"] and report["resumed_at"] == [2]
    assert report["steps"] == len(report["losses"]) >= 3
    assert (tmp_path / "rounds" / "round_0" / "examples.jsonl").read_text() == examples
    final = Path(summary["final"])
    assert final == tmp_path / "final" and (final / "config.json").is_file()

    trained = AutoModelForCausalLM.from_pretrained(final)
    base = AutoModelForCausalLM.from_pretrained(model_path)
    assert any(
        not torch.equal(a, b) for a, b in zip(trained.parameters(), base.parameters(), strict=True)
    )
    rollout = RolloutGroup(cfg, str(final))
    try:
        traces = rollout.generate(splits.eval[:2], 1, greedy=True, seed=0)
    finally:
        rollout.shutdown()
    assert len(traces) == 2 and all(t.attempt1_ids for t in traces)


def test_star_in_stage2_trains_final_from_the_stage1_policy(
    ray_local, guessing_model_path, tmp_path
):
    """`score-ray train train.stage2_method=star` (the paper's Table 4 "STaR in Stage II"):
    one Stage I step on the real learner, the Stage I policy written to stage1/, then a STaR
    round from it on the rollout workers and verifier pool, trained on Ray Train; final/ is
    that round's model, and stage2.json and eval.json say so with the revisions kept."""
    import torch
    from transformers import AutoModelForCausalLM

    from score_ray.cli import main as cli_main
    from score_ray.eval_cli import eval_config
    from score_ray.star_stage2 import read_stage2

    one_digit = "{min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1, operators: ['+']}"
    overrides = [
        f"output_dir={tmp_path}",
        f"model.path={guessing_model_path}",
        f"task.params={one_digit}",
        "train.stage1_steps=1",
        "train.stage2_steps=0",
        "train.stage2_method=star",
        "train.checkpoint_every=0",
        "train.eval_max_problems=2",
        "sft.problems_per_round=32",
        "sft.samples_per_prompt=4",
        "sft.num_workers=1",
        "sft.batch_size=4",
        "sft.micro_batch_size=4",
        "sft.min_examples=2",
        "sft.lr=1e-3",
        "sft.checkpoint_every=100",
    ]
    assert cli_main(["train", "--config", str(CONF / "tiny.yaml"), *overrides]) == 0

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records if "eval" not in r] == [1]  # no RL Stage II step
    assert [r["eval"] for r in records if "eval" in r] == ["base", "stage1"]
    stage2 = json.loads((tmp_path / "stage2.json").read_text())
    (round0,) = stage2["rounds"]
    # 32 problems x 4 traces; the guessing model fixes a wrong first attempt 1 time in ~20
    assert round0["samples"] == 128 and round0["kept"] == round0["fixes"] >= 2
    assert round0["trained"] and round0["steps"] >= 1
    assert stage2["stage2_method"] == "star" and stage2["final_from"] == "stage2_star"
    assert "kept" in stage2["note"] and str(round0["kept"]) in stage2["note"]

    final, stage1 = tmp_path / "final", tmp_path / "stage1"
    star_out = tmp_path / "stage2_star" / "final"
    trained = AutoModelForCausalLM.from_pretrained(final)
    start = AutoModelForCausalLM.from_pretrained(stage1)
    pairs = list(zip(trained.parameters(), start.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in pairs)  # STaR moved the Stage I policy
    assert (final / "model.safetensors").read_bytes() == (
        star_out / "model.safetensors"
    ).read_bytes()
    # `score-ray eval model.path=RUN` evaluates final/, and its eval.json names the method
    cfg, run_dir = eval_config(None, [f"model.path={tmp_path}"])
    assert cfg.model.path == str(final) and read_stage2(run_dir) == stage2
