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
