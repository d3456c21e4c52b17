"""train.time_budget_s (pure logic): when the driver loop stops before its schedule ends."""

from types import SimpleNamespace

from score_ray.config import load_config
from score_ray.trainer import Trainer


def driver(budget: float, spent: float) -> SimpleNamespace:
    """The fields `Trainer._out_of_time` reads, without actors."""
    cfg = load_config(None, [f"train.time_budget_s={budget}"])
    return SimpleNamespace(cfg=cfg, train_seconds=spent, global_step=3, schedule=[1] * 10)


def test_no_budget_never_stops():
    assert not Trainer._out_of_time(driver(budget=0, spent=1e9))


def test_stops_once_the_steps_have_used_the_budget(capsys):
    assert not Trainer._out_of_time(driver(budget=60, spent=59.9))
    assert Trainer._out_of_time(driver(budget=60, spent=60.0))
    assert "stopping after step 3 of 10" in capsys.readouterr().out
