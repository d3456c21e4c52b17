"""`score-ray sft` command line and the driver's pure helpers (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

from score_ray.cli import build_parser
from score_ray.config import ConfigError, load_config, save_config
from score_ray.sft.cli import sft_config
from score_ray.sft.run import round_problems, too_few
from score_ray.tasks.base import Problem

TINY = str(Path(__file__).resolve().parents[2] / "conf" / "tiny.yaml")


def parse(*argv: str):
    return build_parser().parse_args(["sft", *argv])


def test_method_flag_sets_the_config_and_a_used_folder_is_refused(tmp_path):
    cfg = sft_config(parse("--config", TINY, "--method", "gold", f"output_dir={tmp_path}"))
    assert cfg.sft.method == "gold"
    save_config(cfg, tmp_path / "config.yaml")
    with pytest.raises(ConfigError, match="--resume"):
        sft_config(parse("--config", TINY, f"output_dir={tmp_path}"))
    resumed = sft_config(parse("--resume", str(tmp_path)))
    assert resumed.sft.method == "gold" and resumed.output_dir == str(tmp_path)
    with pytest.raises(ConfigError, match="drop --config"):
        sft_config(parse("--config", TINY, "--resume", str(tmp_path)))
    with pytest.raises(ConfigError, match="not found"):
        sft_config(parse("--resume", str(tmp_path / "nothing")))


def test_round_problems_are_a_seeded_draw_and_too_few_says_so_plainly():
    problems = [Problem(str(i), f"q{i}", "1") for i in range(10)]
    cfg = load_config(None, ["sft.problems_per_round=4", "sft.min_examples=5"])
    first = round_problems(cfg, 0, problems)
    assert len(first) == 4 and first == round_problems(cfg, 0, problems)
    assert first != round_problems(cfg, 1, problems)  # each round draws anew
    cfg.sft.problems_per_round = 0
    assert round_problems(cfg, 0, problems) == problems
    note = too_few(cfg, 2, 3)
    assert note.startswith("round 2 has too few examples to train on: 3 successful revisions")
    assert "sft.min_examples=5" in note
