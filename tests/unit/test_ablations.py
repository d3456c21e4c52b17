"""benchmarks/ablations.py reuses a variant only when its saved run is the one it would
train now: same resolved config, a final model, and an evaluation of that model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from score_ray.config import load_config, save_config

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import ablations  # noqa: E402

CONFIGS = [str(ROOT / "conf/demo.yaml"), str(ROOT / "conf/ablations/no_shaping.yaml")]
STEPS = ["train.stage1_steps=6", "train.stage2_steps=8"]


@pytest.fixture
def finished_run(tmp_path: Path) -> tuple[Path, Path]:
    run_dir, eval_dir = tmp_path / "no_shaping" / "train", tmp_path / "no_shaping" / "eval"
    save_config(load_config(CONFIGS, [*STEPS, f"output_dir={run_dir}"]), run_dir / "config.yaml")
    (run_dir / "final").mkdir()
    eval_dir.mkdir(parents=True)
    (eval_dir / "eval.json").write_text(json.dumps({"run_dir": str(run_dir)}))
    return run_dir, eval_dir


def test_a_finished_variant_with_the_same_config_is_reused(finished_run):
    assert ablations.finished(*finished_run, CONFIGS, STEPS)


def test_a_different_budget_or_override_is_trained_again(finished_run):
    assert not ablations.finished(
        *finished_run, CONFIGS, ["train.stage1_steps=0", "train.stage2_steps=14"]
    )
    assert not ablations.finished(*finished_run, CONFIGS, [*STEPS, "algo.alpha=5"])
    assert not ablations.finished(*finished_run, CONFIGS[:1], STEPS)


def test_a_run_killed_before_its_final_model_or_evaluation_is_trained_again(finished_run):
    run_dir, eval_dir = finished_run
    (eval_dir / "eval.json").unlink()
    assert not ablations.finished(run_dir, eval_dir, CONFIGS, STEPS)
    (eval_dir / "eval.json").write_text(json.dumps({"run_dir": str(run_dir)}))
    (run_dir / "final").rmdir()
    assert not ablations.finished(run_dir, eval_dir, CONFIGS, STEPS)


def test_an_evaluation_of_another_model_is_not_reused(finished_run):
    run_dir, eval_dir = finished_run
    (eval_dir / "eval.json").write_text(json.dumps({"run_dir": "elsewhere/train"}))
    assert not ablations.finished(run_dir, eval_dir, CONFIGS, STEPS)


def test_a_run_saved_before_a_config_key_existed_counts_it_as_default(finished_run):
    run_dir, eval_dir = finished_run
    text = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(text.replace("  share_prompt_prefix: true\n", ""))
    assert "share_prompt_prefix" not in (run_dir / "config.yaml").read_text()
    assert ablations.finished(run_dir, eval_dir, CONFIGS, STEPS)
    assert not ablations.finished(run_dir, eval_dir, CONFIGS, [*STEPS, "learner.lr=1e-3"])
