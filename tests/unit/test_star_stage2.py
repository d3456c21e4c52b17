"""STaR in Stage II (`train.stage2_method=star`): the config checks, stage2.json from the STaR
rounds' summary, what eval.json and report.md say of it, and the chaining when no round keeps
enough revisions (no Ray: the rounds' sampled data is read back from disk)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from score_ray.config import Config, ConfigError, load_config
from score_ray.report import star_stage2_lines
from score_ray.star_stage2 import STAR_DIR, read_stage2, run_star_stage2, stage2_report
from score_ray.tasks.base import Problem

STAR = ["train.stage2_method=star", "train.stage2_steps=0"]
TINY = Path(__file__).resolve().parents[2] / "conf" / "tiny.yaml"


def _round(index: int, kept: int, trained: bool) -> dict:
    return {
        "round": index,
        "samples": 128,
        "fixes": kept + 1,  # one dropped as too long
        "breaks": 3,
        "kept": kept,
        "min_examples": 16,
        "trained": trained,
        **({"steps": 2} if trained else {"note": f"round {index} has too few examples"}),
    }


def test_stage2_method_is_validated_with_the_key_named():
    assert load_config(None, STAR).train.stage2_method == "star"
    assert load_config(None, []).train.stage2_method == "rl"
    with pytest.raises(ConfigError, match=r"train\.stage2_method: must be one of \['rl', 'star'\]"):
        load_config(None, ["train.stage2_method=dpo"])
    # Stage II's RL steps and STaR rounds are one or the other, not both.
    with pytest.raises(ConfigError, match=r"train\.stage2_steps: must be 0 with .*star"):
        load_config(None, ["train.stage2_method=star", "train.stage2_steps=3"])
    with pytest.raises(ConfigError, match=r"sft\.method: train\.stage2_method=star runs STaR"):
        load_config(None, [*STAR, "sft.method=pair_sft"])


def test_the_report_counts_each_rounds_revisions_and_names_the_final_model():
    summary = {"rounds": [_round(0, 20, True), _round(1, 4, False)]}
    report = stage2_report(summary, "stage2_star")
    assert report["stage2_method"] == "star" and report["final_from"] == "stage2_star"
    assert [(r["kept"], r["trained"], r["steps"]) for r in report["rounds"]] == [
        (20, True, 2),
        (4, False, 0),
    ]
    assert report["rounds_trained"] == 1
    assert report["note"] == (
        "STaR in Stage II kept 20, 4 successful revisions in 2 round(s); 1 trained; final/ is "
        "the last trained round's model"
    )


def test_too_few_revisions_are_said_plainly_and_final_is_the_stage1_policy():
    report = stage2_report({"rounds": [_round(0, 0, False)]}, "stage1")
    assert report["rounds_trained"] == 0 and report["final_from"] == "stage1"
    assert report["note"] == (
        "STaR in Stage II kept 0 successful revisions in 1 round(s), too few to train on "
        "(sft.min_examples=16); no round trained, so final/ is the Stage I policy"
    )
    lines = "\n".join(star_stage2_lines(report))
    assert "| 0 | 128 | 1 | 3 | 0 | no (too few) | 0 |" in lines
    assert f"**{report['note']}**" in lines


def test_eval_reads_which_stage2_ran(tmp_path):
    sft_run, rl_run, star_run = (tmp_path / name for name in ("sft", "rl", "star"))
    for run in (sft_run, rl_run, star_run):
        run.mkdir()
    (rl_run / "metrics.jsonl").write_text("")
    (star_run / "metrics.jsonl").write_text("")
    report = stage2_report({"rounds": [_round(0, 20, True)]}, "stage2_star")
    (star_run / "stage2.json").write_text(json.dumps(report))
    assert read_stage2(sft_run) is None  # a `score-ray sft` folder: no SCoRe Stage II at all
    assert read_stage2(rl_run) == {"stage2_method": "rl"}
    assert read_stage2(star_run) == report
    assert star_stage2_lines({"stage2_method": "rl"}) == [] == star_stage2_lines(None)


def _saved_round(folder: Path, index: int, samples: int) -> None:
    """A round whose sampled data is on disk with 0 successful revisions: `run_sft` reads it
    back (its resume path) instead of sampling, so no Ray is needed."""
    data = {"problems": samples // 2, "samples": samples, "attempt1_right": 0}
    data |= {"attempt2_right": 0, "fixes": 0, "breaks": 0, "kept": 0, "dropped_too_long": 0}
    round_dir = folder / "rounds" / f"round_{index}"
    round_dir.mkdir(parents=True)
    (round_dir / "examples.jsonl").write_text("")
    (round_dir / "data.json").write_text(json.dumps(data))


def test_rounds_with_too_few_revisions_leave_the_stage1_policy_as_final(tmp_path):
    """The chaining's too-few path on the real `run_sft` and `run_star_stage2`: two STaR rounds
    with 0 kept revisions are not trained, each says so, and final/ is the Stage I policy."""
    from score_ray.models import build_tiny_model

    tiny = Path(build_tiny_model(Config().model.cache_dir))
    cfg = load_config(TINY, [f"output_dir={tmp_path}", *STAR, "sft.rounds=2"])
    shutil.copytree(tiny, tmp_path / "stage1")  # what the trainer writes after Stage I
    for index in (0, 1):
        _saved_round(tmp_path / STAR_DIR, index, samples=8)
    problems = [Problem(f"p{i}", f"q{i}", "1") for i in range(4)]

    report = run_star_stage2(cfg, problems)

    summary = json.loads((tmp_path / STAR_DIR / "sft_summary.json").read_text())
    assert summary["final"] is None and not (tmp_path / STAR_DIR / "final").exists()
    notes = [r["note"] for r in summary["rounds"]]
    assert all(n.endswith("the round is skipped and the model is unchanged") for n in notes)
    assert [(r["samples"], r["kept"], r["trained"]) for r in report["rounds"]] == [
        (8, 0, False),
        (8, 0, False),
    ]
    assert report["final_from"] == "stage1" and "too few to train on" in report["note"]
    assert json.loads((tmp_path / "stage2.json").read_text()) == report
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (tmp_path / "final" / name).read_bytes() == (tiny / name).read_bytes()
