"""Evaluation: metrics, the paired bootstrap, the K-attempt loop and `score-ray eval` config."""

from pathlib import Path

import pytest

from score_ray.cli import main as cli_main
from score_ray.config import load_config, save_config
from score_ray.eval_cli import context_needed, eval_config, is_run_dir
from score_ray.evaluate import (
    attempt_metrics,
    bootstrap_intervals,
    format_summary,
    quantile,
    run_attempts,
    self_correction_metrics,
    summarize,
)
from score_ray.rollout.group import _split

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_metrics_by_hand():
    # problem:  a: right, right   b: right, wrong   c: wrong, right   d: wrong, right
    m = self_correction_metrics([1, 1, 0, 0], [1, 0, 1, 1])
    assert m == {"acc_t1": 0.5, "acc_t2": 0.75, "delta": 0.25, "delta_i2c": 0.5, "delta_c2i": 0.25}


def test_attempt_metrics_adds_later_attempts():
    m = attempt_metrics([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]])
    assert m["acc_t1"] == 0.25 and m["acc_t2"] == 0.5 and m["acc_t3"] == 0.75
    assert m["delta"] == 0.25  # the SCoRe deltas always compare attempts 1 and 2
    assert "acc_t3" not in attempt_metrics([[1], [0]])


@pytest.mark.parametrize("rewards", [[[1, 0]], [[1, 0], [1]], [[1, 0], [1, 0], [1]], [[], []]])
def test_attempt_metrics_rejects_bad_shapes(rewards):
    with pytest.raises(ValueError):
        attempt_metrics(rewards)


def test_quantile_interpolates_linearly():
    assert quantile([3, 0, 2, 1], 0.5) == 1.5  # position 1.5 in [0, 1, 2, 3]
    assert quantile([0, 10], 0.025) == 0.25
    assert quantile([0, 10], 1.0) == 10
    assert quantile([7], 0.3) == 7


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_all_equal_rewards_give_zero_width_intervals(value):
    intervals = bootstrap_intervals([[value] * 30, [value] * 30, [value] * 30], resamples=200)
    for low, high in intervals.values():
        assert low == high
    assert intervals["acc_t1"] == (value, value)
    assert intervals["delta"] == (0.0, 0.0)


def test_identical_attempts_give_zero_width_delta_because_pairs_are_kept():
    r = [1, 0] * 20
    intervals = bootstrap_intervals([r, list(r)], resamples=500)
    for name in ("delta", "delta_i2c", "delta_c2i"):
        assert intervals[name] == (0.0, 0.0)
    low, high = intervals["acc_t1"]
    assert low < 0.5 < high  # each accuracy alone still varies


def test_two_problems_by_hand():
    # r1 = [0, 1], r2 = [1, 1]. A resample has 0, 1 or 2 copies of problem 0 with
    # probability 1/4, 1/2, 1/4, so acc_t1 (= 1 - delta = 1 - i2c) takes 1, 1/2, 0 with those
    # probabilities: both 2.5% tails sit on the extremes (0 and 1 each have 25% mass).
    intervals = bootstrap_intervals([[0, 1], [1, 1]], resamples=2000)
    assert intervals["acc_t1"] == (0.0, 1.0)
    assert intervals["acc_t2"] == (1.0, 1.0)
    assert intervals["delta"] == (0.0, 1.0)
    assert intervals["delta_i2c"] == (0.0, 1.0)
    assert intervals["delta_c2i"] == (0.0, 0.0)


def test_half_right_matches_the_normal_approximation():
    # p = 0.5, n = 100: standard error 0.05, so the 95% interval is about 0.5 +- 0.098.
    r1 = [1, 0] * 50
    low, high = bootstrap_intervals([r1, r1], resamples=2000)["acc_t1"]
    assert low == pytest.approx(0.40, abs=0.015)
    assert high == pytest.approx(0.60, abs=0.015)


def test_bootstrap_is_deterministic_and_seeded():
    rewards = [[1, 0, 0, 1, 1, 0, 1], [1, 1, 0, 1, 0, 0, 1]]
    assert bootstrap_intervals(rewards, seed=3) == bootstrap_intervals(rewards, seed=3)
    assert bootstrap_intervals(rewards, seed=3) != bootstrap_intervals(rewards, seed=4)


def test_summary_holds_every_metric_inside_its_interval():
    rewards = [[1, 0, 0, 1, 1, 0, 1, 0], [1, 1, 0, 1, 0, 0, 1, 1], [1, 1, 1, 1, 0, 0, 1, 1]]
    summary = summarize(rewards, resamples=300)
    assert list(summary) == ["acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i", "acc_t3"]
    for entry in summary.values():
        low, high = entry["ci"]
        assert low <= entry["value"] <= high
    table = format_summary(summary, n=8)
    assert "acc_t3" in table and "n = 8" in table and "delta" in table


def test_bootstrap_rejects_bad_arguments():
    with pytest.raises(ValueError):
        bootstrap_intervals([[1], [1]], resamples=0)
    with pytest.raises(ValueError):
        bootstrap_intervals([[1], [1]], confidence=1.0)


class FakeSampler:
    """Attempt k of prompt i answers [10 * k + i, STOP] ("cut off" for odd i: no STOP)."""

    STOP = 2

    def __init__(self):
        self.calls: list[list[list[int]]] = []

    def __call__(self, prompts):
        self.calls.append(prompts)
        k = len(self.calls)
        return [
            ([10 * k + i] + ([] if i % 2 else [self.STOP]), f"attempt {k} of {i}")
            for i in range(len(prompts))
        ]


def _bridge(ids):
    """Like PromptBuilder.bridge_ids: a cut-off attempt also gets its turn closed (-2)."""
    return [-1] if ids[-1] == FakeSampler.STOP else [-2, -1]


def test_run_attempts_splices_the_whole_conversation():
    sampler = FakeSampler()
    runs = run_attempts([[100], [200, 201]], 3, sampler, _bridge)
    assert len(sampler.calls) == 3  # one batched call per attempt
    assert sampler.calls[0] == [[100], [200, 201]]
    assert sampler.calls[1] == [[100, 10, 2, -1], [200, 201, 11, -2, -1]]
    assert sampler.calls[2] == [[100, 10, 2, -1, 20, 2, -1], [200, 201, 11, -2, -1, 21, -2, -1]]
    assert runs[0].completions == [([10, 2], "attempt 1 of 0"), ([20, 2], "attempt 2 of 0"),
                                   ([30, 2], "attempt 3 of 0")]  # fmt: skip
    assert runs[1].context_ids == [200, 201, 11, -2, -1, 21, -2, -1, 31]
    assert runs[1].prompt_ids == [200, 201]


def test_run_attempts_checks_the_sampler():
    with pytest.raises(ValueError):
        run_attempts([[1], [2]], 2, lambda prompts: [([3], "x")], _bridge)
    with pytest.raises(ValueError):
        run_attempts([[1]], 0, FakeSampler(), _bridge)


def test_chunks_are_contiguous_and_ordered():
    assert _split(list(range(5)), 2) == [[0, 1, 2], [3, 4]]
    assert _split([1], 3) == [[1], [], []]


def test_context_needed_counts_prompt_attempts_and_bridges():
    assert context_needed([[0] * 30, [0] * 50], 3, 100, 20) == 50 + 300 + 40


def _fake_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    save_config(load_config(CONF / "tiny.yaml", [f"output_dir={run}"]), run / "config.yaml")
    return run


def test_run_folder_is_evaluated_with_its_final_weights_and_config(tmp_path):
    run = _fake_run(tmp_path)
    assert is_run_dir(run) and not is_run_dir(tmp_path)
    cfg, run_dir = eval_config(None, [f"model.path={run}", f"output_dir={tmp_path / 'ev'}"])
    assert run_dir == run
    assert cfg.model.path == str(run / "final")
    assert cfg.task.train_size == 64  # from the run's config.yaml (conf/tiny.yaml)
    assert cfg.output_dir == str(tmp_path / "ev")


def test_explicit_config_wins_over_the_run_config(tmp_path):
    run = _fake_run(tmp_path)
    cfg, _ = eval_config(str(CONF / "default.yaml"), [f"model.path={run}"])
    assert cfg.model.path == str(run / "final")
    assert cfg.task.train_size == 2000  # conf/default.yaml


def test_plain_model_path_is_left_alone():
    cfg, run_dir = eval_config(None, ["model.path=tiny-llama"])
    assert run_dir is None and cfg.model.path == "tiny-llama"


def test_cli_rejects_fewer_than_two_attempts(capsys):
    assert cli_main(["eval", "--attempts", "1", "model.path=tiny-llama"]) == 2
    assert "--attempts" in capsys.readouterr().err
