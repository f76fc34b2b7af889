"""`prolong train` plans its stages first and stops, with the plan's numbers, when one will not fit."""

from __future__ import annotations

import pytest
import yaml

import prolong.plan.commands as plan_commands
from prolong.errors import UserError
from prolong.plan.measure import VALIDATION_CASES, validation_recipe
from prolong.plan.report import Capacity
from prolong.train.commands import train


@pytest.fixture
def tiny_recipe(tmp_path):
    recipe = validation_recipe(VALIDATION_CASES[0])
    data = recipe.model_dump(mode="json")
    data["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_stage_that_does_not_fit_stops_before_anything_loads(tiny_recipe, monkeypatch) -> None:
    monkeypatch.setattr(plan_commands, "this_machine", lambda: (Capacity(2**20), "cpu"))
    with pytest.raises(UserError, match=r"(?s)does not fit: needs .*stage 'stage' will not fit.*--no-plan"):
        train(str(tiny_recipe))


def test_no_plan_skips_the_check(tiny_recipe, monkeypatch) -> None:
    monkeypatch.setattr(plan_commands, "this_machine", lambda: (Capacity(2**20), "cpu"))
    with pytest.raises(UserError) as stopped:  # the run goes on, and stops at the missing tokenizer
        train(str(tiny_recipe), plan=False)
    assert "will not fit" not in str(stopped.value) and "tokenizer" in str(stopped.value)


def test_a_stage_far_below_the_device_skips_the_dry_run(tiny_recipe, monkeypatch, capsys) -> None:
    """The quick bound (prolong.plan.bound) fits a tiny model in 24 GiB: no planning subprocess."""
    monkeypatch.setattr(plan_commands, "this_machine", lambda: (Capacity(24 * 2**30), "cpu"))

    def no_subprocess(*args, **kwargs):
        raise AssertionError("the dry run ran although the bound fits")

    monkeypatch.setattr(plan_commands.subprocess, "run", no_subprocess)
    assert plan_commands.check_stages_fit(str(tiny_recipe), ["stage"], 1) == []
    assert "needs at most" in capsys.readouterr().out


def test_bound_is_none_for_configs_it_cannot_read() -> None:
    from types import SimpleNamespace

    from prolong.plan.bound import memory_upper_bound
    from prolong.plan.measure import validation_recipe

    recipe = validation_recipe(VALIDATION_CASES[0])
    moe = SimpleNamespace(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=256, num_experts=8)
    assert memory_upper_bound(moe, recipe.stages[0], recipe.training) is None
    assert memory_upper_bound(SimpleNamespace(), recipe.stages[0], recipe.training) is None
