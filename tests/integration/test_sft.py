"""`score-ray sft` through the real stack on the tiny model: Ray Train (TorchTrainer, 2 DDP
workers on gloo), RL's RolloutGroup (vLLM) and VerifierPool, a killed run that resumes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from score_ray.launch import prepare_splits
from score_ray.sft.run import run_sft

from .conftest import tiny_config

SMALL_TRAINING = (
    "sft.num_workers=2",
    "sft.batch_size=4",
    "sft.micro_batch_size=2",
    "sft.checkpoint_every=2",
    "sft.min_examples=4",
    "sft.lr=1e-3",
)


def test_star_on_the_rl_actors_says_plainly_when_a_round_has_too_few(
    ray_local, tiny_model_path, tmp_path
):
    """The random tiny model never answers right: both rounds keep 0 successful revisions,
    and the summary says each had too few to train on (no final/)."""
    cfg = tiny_config(
        tmp_path,
        "sft.method=star",
        "sft.rounds=2",
        "sft.problems_per_round=4",
        "sft.samples_per_prompt=2",
        *SMALL_TRAINING,
    )
    model_path, splits = prepare_splits(cfg)
    summary = run_sft(cfg, model_path, splits.train)
    rounds = summary["rounds"]
    assert [r["samples"] for r in rounds] == [8, 8]  # 4 problems x 2 traces, from vLLM
    assert [r["kept"] for r in rounds] == [0, 0]
    assert all(not r["trained"] and "too few examples to train on" in r["note"] for r in rounds)
    assert summary["final"] is None
    saved = json.loads((tmp_path / "sft_summary.json").read_text())
    assert saved["rounds"][1]["note"] == rounds[1]["note"]


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
