"""Input preparation before Ray starts: overlong prompts dropped and counted, empty data
sets and bad rows reported with the key's name."""

import json
import logging

import pytest

from score_ray.config import ConfigError, load_config
from score_ray.launch import prepare_inputs


def _jsonl(path, rows):
    path.write_bytes(
        b"".join(r if isinstance(r, bytes) else (json.dumps(r) + "\n").encode() for r in rows)
    )
    return path


def _cfg(tmp_path, *overrides):
    train = _jsonl(
        tmp_path / "train.jsonl",
        [
            {"problem": "What is 1 + 1?", "answer": "2"},
            {"problem": "What is 2 + 2?", "answer": "4"},
            {"problem": "word " * 3000, "answer": "5"},  # far longer than the context
            {"problem": "missing answer"},
            b"\xff\xfe not utf-8\n",
        ],
    )
    held_out = _jsonl(
        tmp_path / "eval.jsonl",
        [{"problem": "What is 3 + 3?", "answer": "6"}, {"problem": "huge " * 3000, "answer": "1"}],
    )
    return load_config(
        None,
        [
            "model.path=tiny-llama",
            "task.source=math_jsonl",
            f"task.path={train}",
            f"task.eval_path={held_out}",
            "model.max_model_len=512",
            "rollout.max_new_tokens=24",
            *overrides,
        ],
    )


def test_overlong_prompts_and_bad_rows_are_dropped_and_counted(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="score_ray"):
        _, train, held_out = prepare_inputs(_cfg(tmp_path))
    assert sorted(p.answer for p in train) == ["2", "4"]
    assert [p.answer for p in held_out] == ["6"]
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "2 malformed rows skipped" in message
    assert "1/1 too long dropped" in message


def test_nothing_fits_in_context_is_an_error_naming_the_key(tmp_path):
    cfg = _cfg(tmp_path, "model.max_model_len=64", "rollout.max_new_tokens=24")
    with pytest.raises(ConfigError, match=r"model\.max_model_len"):
        prepare_inputs(cfg)


def test_empty_dataset_is_an_error_naming_the_key(tmp_path):
    bad = _jsonl(tmp_path / "bad.jsonl", [{"problem": ""}, b"not json\n"])
    cfg = load_config(None, ["model.path=tiny-llama", "task.source=math_jsonl", f"task.path={bad}"])
    with pytest.raises(ConfigError, match=r"task\.path"):
        prepare_inputs(cfg)
