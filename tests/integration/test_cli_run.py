"""`score-ray demo` / `score-ray train` on conf/tiny.yaml as a user runs them: subprocesses,
each with its own Ray.

The demo (base eval -> train -> trained eval -> report) injects verifier faults (raises and
hangs) to show that training and evaluation go on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.integration.conftest import CONF
from tests.unit.test_tracking import mlflow_run, wandb_run

TIME_FIELDS = ("time/generate", "time/verify", "time/learn", "time/sync")
REQUIRED = (
    "stage",
    "step",
    "weight_version",
    "reward/attempt1",
    "reward/attempt2",
    "acc/t1",
    "acc/t2",
    "train/delta_i2c",
    "train/delta_c2i",
    "signal/attempt1",
    "signal/attempt2",
    "kl/attempt1",
    "kl/attempt2",
    "loss",
    "tokens/generated",
    *TIME_FIELDS,
)


# Each hung verification waits verifier.timeout_s and then for a new verifier actor: few
# held-out problems keep the five evaluations (two demo steps, three in training) short.
EVAL_PROBLEMS = 4


def test_tiny_demo_two_stage_run_with_verifier_faults(tmp_path):
    demo = tmp_path / "demo"
    out = demo / "train"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true")  # W&B without network or account
    env.update({name: str(tmp_path / name) for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR")})
    cmd = [
        sys.executable,
        "-m",
        "score_ray.cli",
        "demo",
        "--config",
        str(CONF / "tiny.yaml"),
        "--output-dir",
        str(demo),
        f"task.eval_size={EVAL_PROBLEMS}",
        "train.eval_every=2",
        "verifier.chaos_raise_rate=0.2",
        "verifier.chaos_hang_rate=0.1",
        "verifier.timeout_s=3",
        "logging.backends=[tensorboard,wandb,mlflow]",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "eval" not in r]
    evals = [r for r in records if "eval" in r]
    assert [r["stage"] for r in steps] == [1, 1, 2, 2]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert [r["weight_version"] for r in steps] == [1, 2, 3, 4]
    # each step's traces came from the weights of the step before
    assert [r["rollout_weight_version"] for r in steps] == [0, 1, 2, 3]
    for record in steps:
        missing = [key for key in REQUIRED if key not in record]
        assert not missing, f"step {record['step']} lacks {missing}"
        assert all(record[key] >= 0 for key in TIME_FIELDS)
    faults = sum(r["verify/errors"] + r["verify/timeouts"] for r in steps)
    assert faults > 0, "fault injection should have hit at least one verification"
    assert sum(r["verify/timeouts"] for r in steps) > 0
    # step 4's periodic evaluation would repeat the final one, so it is skipped
    assert [(e["eval"], e["step"]) for e in evals] == [("base", 0), ("periodic", 2), ("final", 4)]
    assert {"eval/acc_t1", "eval/acc_t2", "eval/delta", "eval/delta_i2c", "eval/delta_c2i"} <= set(
        evals[-1]
    )

    assert (out / "config.yaml").is_file()
    assert "chaos_hang_rate: 0.1" in (out / "config.yaml").read_text()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    # The trackers got the trainer's scalars and its final evaluation.
    final = {k.removeprefix("eval/"): v for k, v in evals[-1].items() if k.startswith("eval/")}
    wandb = wandb_run(out)
    assert ("loss", 4, steps[-1]["loss"]) in wandb["points"]
    assert wandb["summary"]["final/acc_t2"] == final["acc_t2"]
    assert wandb["config"]["verifier"]["chaos_hang_rate"] == 0.1
    ml_points, params, _, info = mlflow_run(out)
    assert ("final/delta", 4, final["delta"]) in ml_points and info.status == "FINISHED"
    assert params["verifier.chaos_hang_rate"] == "0.1"
    assert "SCoRe" in proc.stderr and "eval: 100%" in proc.stderr  # the progress bars

    # The demo's evaluations and report; the evaluations met faults too, and went on.
    eval_faults = 0
    for name in ("eval_base", "eval_trained"):
        report = json.loads((demo / name / "eval.json").read_text())
        assert report["n"] == EVAL_PROBLEMS and report["attempts"] == 2
        eval_faults += report["verify"]["verify/errors"] + report["verify"]["verify/timeouts"]
        for metric in ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i"):
            low, high = report[metric]["ci"]
            assert low <= report[metric]["value"] <= high
    assert eval_faults > 0, "fault injection should have hit the evaluations too"
    assert json.loads((demo / "eval_trained" / "eval.json").read_text())["model_path"] == str(
        out / "final"
    )
    markdown = (demo / "report.md").read_text()
    assert "| Acc@t2 |" in markdown and "peak memory" in markdown
    for png in ("accuracy_per_attempt.png", "reward_per_attempt.png"):
        assert (demo / png).stat().st_size > 1000
    summary = json.loads((demo / "demo.json").read_text())
    assert summary["peak_memory_bytes"] > 0 and set(summary["step_s"]) == {
        "base eval",
        "train",
        "trained eval",
    }
    assert "Acc@t1" in proc.stdout and "change" in proc.stdout  # the before/after table

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert model.config.num_hidden_layers == 2
    assert AutoTokenizer.from_pretrained(out / "final").chat_template


def test_bad_config_fails_before_ray_with_key_named(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "score_ray.cli",
        "train",
        "--config",
        str(CONF / "tiny.yaml"),
        f"output_dir={tmp_path}",
        "learner.lr=-1",
        "train.samples_per_prompt=1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "learner.lr" in proc.stderr and "train.samples_per_prompt" in proc.stderr
    assert "Started a local Ray" not in proc.stderr


def test_train_with_branching_offline_attempts_and_dev_split(tmp_path):
    """The self-correction levers through the real stack: two second attempts per first
    attempt, half of each step's prompts from the offline base-model pool, per-attempt
    temperatures, trajectory credit, and in-training evaluations on the dev split."""
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [
        sys.executable,
        "-m",
        "score_ray.cli",
        "train",
        "--config",
        str(CONF / "tiny.yaml"),
        f"output_dir={out}",
        "train.stage1_steps=1",
        "train.stage2_steps=1",
        "rollout.attempt2_samples=2",
        "train.offline_attempt1_fraction=0.5",
        "train.offline_pool_size=4",
        "rollout.temperature=1.2",
        "rollout.attempt2_temperature=0.6",
        "algo.credit=trajectory",
        "algo.gamma=0.5",
        "task.dev_size=5",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    pool = [json.loads(line) for line in (out / "offline_attempt1.jsonl").read_text().splitlines()]
    assert len(pool) == 4 and all(len(row["attempts"]) == 2 for row in pool)  # S = 2 each
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "eval" not in r]
    assert [r["stage"] for r in steps] == [1, 2]
    for record in steps:
        # 2 prompts x 2 first attempts x 2 second attempts; one prompt of two from the pool
        assert record["signal/offline_traces"] == 0.5
        for key in (
            "train/fixes",
            "train/breaks",
            "signal/answer_changed",
            "signal/answer_changed_wrong1",
            "truncated/attempt1",
            "truncated/attempt2",
        ):
            assert key in record, key
    evals = [r for r in records if "eval" in r]
    assert {e["eval/split"] for e in evals} == {"dev"} and evals[0]["eval/problems"] == 5
    saved = (out / "config.yaml").read_text()
    assert "credit: trajectory" in saved and "attempt2_samples: 2" in saved
