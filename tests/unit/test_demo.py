"""`score-ray demo`'s steps: what each child command is given (pure argv logic)."""

from __future__ import annotations

from pathlib import Path

from score_ray.demo import demo_steps

COMMON = ["--config", "conf/demo.yaml", "seed=3"]


def test_plain_demo_evaluates_trains_and_evaluates_the_configured_model():
    steps = demo_steps(COMMON, Path("out"), sft_first=False)
    assert [name for name, _ in steps] == ["base eval", "train", "trained eval"]
    base_eval, train, trained_eval = (argv for _, argv in steps)
    assert base_eval == ["eval", *COMMON, "output_dir=out/eval_base"]
    assert train == ["train", *COMMON, "output_dir=out/train"]
    assert trained_eval == ["eval", *COMMON, "model.path=out/train", "output_dir=out/eval_trained"]


def test_sft_first_runs_sft_and_starts_every_later_step_from_its_model():
    steps = demo_steps(COMMON, Path("out"), sft_first=True)
    assert [name for name, _ in steps] == ["sft", "base eval", "train", "trained eval"]
    assert steps[0][1] == ["sft", *COMMON, "output_dir=out/sft"]
    for _, argv in steps[1:3]:
        assert argv[-2] == "model.path=out/sft/final"
    # The trained eval's own model.path comes after the SFT base's, so it wins.
    assert steps[3][1][-3:] == [
        "model.path=out/sft/final",
        "model.path=out/train",
        "output_dir=out/eval_trained",
    ]
