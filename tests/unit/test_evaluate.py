"""Evaluation: metrics, the paired bootstrap, exact intervals and tests, the K-attempt loop
and `score-ray eval` config."""

import math
from pathlib import Path

import pytest

from score_ray.cli import main as cli_main
from score_ray.config import load_config, save_config
from score_ray.eval_cli import context_needed, eval_config, is_run_dir
from score_ray.evaluate import (
    BOOTSTRAP,
    CLOPPER_PEARSON,
    attempt_metrics,
    binomial_cdf,
    bootstrap_intervals,
    change_summary,
    clopper_pearson,
    discordant_counts,
    format_p,
    format_summary,
    mcnemar_exact,
    quantile,
    rank_auc,
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


def test_summary_uses_exact_intervals_for_fixes_and_breaks_and_tests_delta():
    # 10 problems: 1 fixed (problem 0), none broken, 4 right twice, 5 wrong twice.
    r1 = [0, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    r2 = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    summary = summarize([r1, r2], resamples=300)
    i2c, c2i = summary["delta_i2c"], summary["delta_c2i"]
    assert i2c["method"] == c2i["method"] == CLOPPER_PEARSON
    assert (i2c["count"], c2i["count"]) == (1, 0)
    assert i2c["ci"] == pytest.approx([0.0025286, 0.4450161], abs=1e-7)  # 1 of 10
    assert c2i["ci"] == pytest.approx([0.0, 0.3084971], abs=1e-7)  # 0 of 10, not [0, 0]
    delta = summary["delta"]
    assert delta["method"] == summary["acc_t1"]["method"] == BOOTSTRAP
    assert (delta["i2c"], delta["c2i"], delta["mcnemar_p"]) == (1, 0, 1.0)  # 2 * 1/2 > 1
    table = format_summary(summary, n=10)
    assert "exact (Clopper-Pearson), 0 of 10" in table
    assert "McNemar exact p = 1.0000 (i->c 1, c->i 0)" in table


def test_format_summary_reads_old_entries_as_bootstrap():
    old = {"delta_i2c": {"value": 0.0, "ci": [0.0, 0.0]}}  # eval.json before exact intervals
    assert format_summary(old, n=500).splitlines()[1].endswith("bootstrap")


def test_discordant_counts_are_fixes_then_breaks():
    # problem:    fixed  broken  right twice  wrong twice  fixed (partial reward 0.5 -> 1)
    assert discordant_counts([0, 1, 1, 0, 0.5], [1, 0, 1, 0, 1]) == (2, 1)


def test_binomial_cdf_by_hand():
    assert binomial_cdf(0, 5, 0.5) == pytest.approx(1 / 32)
    assert binomial_cdf(1, 10, 0.5) == pytest.approx(11 / 1024)  # (1 + 10) / 2**10
    assert binomial_cdf(1, 3, 0.2) == pytest.approx(0.8**3 + 3 * 0.2 * 0.8**2)  # 0.896
    assert binomial_cdf(-1, 3, 0.2) == 0.0 and binomial_cdf(3, 3, 0.2) == 1.0
    assert binomial_cdf(0, 4, 0.0) == 1.0 and binomial_cdf(3, 4, 1.0) == 0.0
    # n in the thousands: C(5000, 2500) overflows a float, the log-space terms do not
    assert binomial_cdf(2500, 5000, 0.5) == pytest.approx(0.5 + 0.5 * 0.011283, abs=1e-5)


def test_clopper_pearson_by_hand():
    # 0 of 10: the upper end solves (1 - p)**10 = 0.025, so p = 1 - 0.025**(1/10)
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 1 - 0.025**0.1), abs=1e-12)
    assert clopper_pearson(0, 10)[1] == pytest.approx(0.3085, abs=5e-5)
    # 10 of 10: the mirror image, p**10 = 0.025
    assert clopper_pearson(10, 10) == pytest.approx((0.025**0.1, 1.0), abs=1e-12)
    # 1 of 10: lower solves 1 - (1 - p)**10 = 0.025; upper solves (1-p)**10 + 10 p (1-p)**9
    # = 0.025, which has no closed form: R's binom.test(1, 10) gives 0.4450161
    low, high = clopper_pearson(1, 10)
    assert low == pytest.approx(1 - 0.975**0.1, abs=1e-12)
    assert (1 - high) ** 10 + 10 * high * (1 - high) ** 9 == pytest.approx(0.025, abs=1e-12)
    assert high == pytest.approx(0.4450161, abs=1e-7)
    # a 90% interval is narrower: 0 of 10 -> 1 - 0.05**(1/10)
    assert clopper_pearson(0, 10, confidence=0.90)[1] == pytest.approx(1 - 0.05**0.1)


def test_clopper_pearson_is_symmetric_and_rejects_bad_counts():
    low, high = clopper_pearson(3, 20)
    assert clopper_pearson(17, 20) == pytest.approx((1 - high, 1 - low), abs=1e-12)
    for k, n in ((-1, 10), (11, 10), (0, 0)):
        with pytest.raises(ValueError):
            clopper_pearson(k, n)


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (5, 0, 2 / 2**5),  # 0.0625: five fixes and no break is not significant at 0.05
        (0, 5, 2 / 2**5),  # two-sided: the same either way round
        (9, 1, 2 * (1 + 10) / 2**10),  # 2 * P[X <= 1 | 10] = 22/1024 = 0.0215
        (6, 0, 2 / 2**6),  # 0.03125: six one-way flips are the fewest that reach p < 0.05
        (3, 3, 1.0),  # 2 * P[X <= 3 | 6] = 2 * 42/64 > 1 -> 1
        (0, 0, 1.0),  # no discordant problem: no evidence either way
    ],
)
def test_mcnemar_exact_by_hand(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p)


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_format_p():
    assert format_p(0.0625) == "0.0625" and format_p(1.0) == "1.0000"
    assert format_p(1.5497e-6) == "1.5e-06"


def test_identical_evaluations_change_by_zero_with_a_zero_width_interval():
    rewards = [[1, 0, 1, 0, 0], [1, 1, 0, 0, 0]]
    change = change_summary(rewards, [list(r) for r in rewards], resamples=300)
    assert set(change) == {"acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i"}
    for entry in change.values():
        assert entry["value"] == 0.0 and entry["ci"] == [0.0, 0.0]
        assert entry["method"] == BOOTSTRAP


def test_change_of_one_problem_by_hand():
    # Two problems; training fixes attempt 1 of problem 0 only. A resample holds 0, 1 or 2
    # copies of problem 0 (probability 1/4, 1/2, 1/4), so the Acc@t1 change is 0, 1/2 or 1:
    # each end carries 25% > 2.5%, so the interval is [0, 1]. Acc@t2 never changes.
    base = [[0, 1], [1, 1]]
    trained = [[1, 1], [1, 1]]
    change = change_summary(base, trained, resamples=2000)
    assert change["acc_t1"]["value"] == 0.5 and change["acc_t1"]["ci"] == [0.0, 1.0]
    assert change["acc_t2"]["value"] == 0.0 and change["acc_t2"]["ci"] == [0.0, 0.0]
    assert change["delta"]["value"] == -0.5 and change["delta"]["ci"] == [-1.0, 0.0]


def test_change_keeps_a_problems_two_evaluations_together():
    # Trained = base plus one right answer, on problem 0 of 40. Unpaired, each accuracy
    # (0.5, 0.525) would vary by ~0.08; paired, the change is 1/40 times the number of
    # draws of problem 0, D ~ Binomial(40, 1/40): P[D = 0] = 0.363 puts the 2.5% end at 0,
    # and P[D <= 2] = 0.922, P[D <= 3] = 0.982 put the 97.5% end at 3/40 = 0.075.
    base = [[0] + [1, 0] * 19 + [1], [0] * 40]
    trained = [[1] + [1, 0] * 19 + [1], [0] * 40]
    low, high = change_summary(base, trained, resamples=1000)["acc_t1"]["ci"]
    assert low == 0.0 and high == pytest.approx(0.075)
    assert math.isclose(change_summary(base, trained, resamples=10)["acc_t1"]["value"], 0.025)


def test_change_needs_the_same_problems():
    with pytest.raises(ValueError):
        change_summary([[1, 0], [1, 0]], [[1], [1]])


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


def test_rank_auc_by_hand():
    # positives 0.9, 0.4; negatives 0.5, 0.4, 0.1: pairs 0.9 beats all 3, 0.4 beats 0.1,
    # ties 0.4 (1/2), loses to 0.5 -> (3 + 1 + 0.5) / 6
    scores = [0.9, 0.5, 0.4, 0.4, 0.1]
    labels = [True, False, True, False, False]
    assert rank_auc(scores, labels) == pytest.approx(4.5 / 6)
    assert rank_auc([1.0, 0.0], [True, False]) == 1.0
    assert rank_auc([0.3, 0.3], [True, False]) == 0.5
    with pytest.raises(ValueError, match="one positive and one negative"):
        rank_auc([0.3], [True])
