"""The Verifier pool on a real Ray: correct rewards, and faults that never stop scoring.

Fault injection makes some verifications raise and some hang forever. Those
score 0 and are counted; hung actors are replaced; every other item still
gets its true reward from the real reasoning-gym scorer.
"""

from __future__ import annotations

from score_ray.config import TaskConfig, VerifierConfig
from score_ray.tasks import load_task_splits
from score_ray.verify.pool import VerifierPool, _chaos_draw


def _items():
    splits = load_task_splits(
        TaskConfig(
            name="basic_arithmetic",
            train_size=4,
            eval_size=12,
            params={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
        )
    )
    items = []
    for problem in splits.eval:
        items.append((problem, f"Let me add.\n<answer>{problem.answer}</answer>"))
        items.append((problem, "I think it is <answer>-98765</answer>"))
        items.append((problem, "no answer tag at all \x00\ud800"))
    return items


def test_pool_scores_correctly_without_faults(ray_local):
    items = _items()
    pool = VerifierPool(VerifierConfig(num_workers=2, timeout_s=10), "answer_tag")
    rewards, stats = pool.score(items)
    pool.shutdown()
    assert rewards == [1.0, 0.0, 0.0] * (len(items) // 3)
    assert (stats.errors, stats.timeouts, stats.restarts) == (0, 0, 0)
    assert stats.faulted == []


def test_pool_survives_raising_and_hanging_verifiers(ray_local):
    items = _items()
    cfg = VerifierConfig(num_workers=2, timeout_s=2, chaos_raise_rate=0.25, chaos_hang_rate=0.15)
    pool = VerifierPool(cfg, "answer_tag")
    rewards, stats = pool.score(items)

    draws = [_chaos_draw(problem.uid, text) for problem, text in items]
    raised = sum(d < 0.25 for d in draws)
    hung = sum(0.25 <= d < 0.40 for d in draws)
    assert raised > 0 and hung > 0, "the fixed items should exercise both faults"
    assert stats.errors == raised
    assert stats.timeouts == hung
    # ... and each faulted item by position (the eval's vote keeps them out of the driver)
    assert sorted(stats.faulted) == [i for i, d in enumerate(draws) if d < 0.40]
    assert stats.restarts >= 1
    for (_, text), draw, reward in zip(items, draws, rewards, strict=True):
        expected = (
            1.0 if draw >= 0.40 and "<answer>-98765" not in text and "\x00" not in text else 0.0
        )
        assert reward == expected

    # The pool keeps serving after the faults.
    again, _ = pool.score(items[:3])
    assert len(again) == 3
    pool.shutdown()


def test_pool_scores_code_in_the_sandbox_and_counts_canaries(ray_local):
    # HumanEval/0 through real Verifier actors: the canonical answer passes; the hacks score
    # 0 (exit, forged __eq__) and are counted, as is a correct answer that reads a file.
    splits = load_task_splits(TaskConfig(source="humaneval", train_size=1000, eval_size=1))
    problem = next(p for p in splits.train + splits.eval if p.meta["task_id"] == "HumanEval/0")

    def fenced(code: str) -> str:
        return f"```python\n{code}\n```"

    honest = fenced(problem.answer)
    reads_a_file = fenced(
        "def has_close_elements(numbers, threshold):\n"
        "    open('/tmp/notes', 'w').write('thinking')\n"
        "    return any(abs(a - b) < threshold\n"
        "               for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"
    )
    exits = fenced("import sys\nsys.exit(0)\n")
    forged = fenced(
        "class Anything:\n    def __eq__(self, other):\n        return True\n"
        "def has_close_elements(numbers, threshold):\n    return Anything()\n"
    )
    items = [(problem, text) for text in (honest, reads_a_file, exits, forged, "no code")]
    pool = VerifierPool(VerifierConfig(num_workers=2, timeout_s=30), "code")
    try:
        rewards, stats = pool.score(items)
    finally:
        pool.shutdown()
    assert rewards == [1.0, 1.0, 0.0, 0.0, 0.0]
    metrics = stats.as_metrics()
    assert metrics["verify/suspicious"] == 3
    assert (metrics["verify/suspicious_files"], metrics["verify/suspicious_exit"]) == (1, 1)
    assert metrics["verify/suspicious_eq"] == 1
    assert (stats.errors, stats.timeouts) == (0, 0)
