"""Where each stage's weights come from: 'previous', 'model', an earlier stage's name, or a directory."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from prolong.config import RECIPES_DIR, recipe_from_dict
from prolong.errors import UserError
from prolong.train.stages import model_source


def _finish(stage_dir: Path) -> None:
    (stage_dir / "export").mkdir(parents=True)
    (stage_dir / "export" / "config.json").write_text("{}")


def test_ultralong_targets_start_from_the_model_and_their_own_extension(tmp_path: Path) -> None:
    data = yaml.safe_load((RECIPES_DIR / "ultralong-8b.yaml").read_text())
    recipe = recipe_from_dict(data, output_dir=str(tmp_path))
    names = [s.name for s in recipe.stages]
    for target in ("1m", "2m", "4m"):
        assert model_source(recipe, names.index(f"extend-{target}")) == Path(recipe.model.path)
        with pytest.raises(UserError, match=f"starts from {tmp_path / f'extend-{target}'}"):
            model_source(recipe, names.index(f"sft-{target}"))  # not trained yet: a clear error
        _finish(tmp_path / f"extend-{target}")
        assert model_source(recipe, names.index(f"sft-{target}")) == tmp_path / f"extend-{target}" / "export"


def test_previous_and_directory(tmp_path: Path) -> None:
    data = yaml.safe_load((RECIPES_DIR / "prolong-8b.yaml").read_text())
    recipe = recipe_from_dict(copy.deepcopy(data), output_dir=str(tmp_path / "run"))
    assert model_source(recipe, 0) == Path(recipe.model.path)
    _finish(tmp_path / "run" / "stage1-64k")
    assert model_source(recipe, 1) == tmp_path / "run" / "stage1-64k" / "export"
    data["stages"][2]["init_from"] = str(tmp_path / "elsewhere")
    _finish(tmp_path / "elsewhere")
    recipe = recipe_from_dict(data, output_dir=str(tmp_path / "run"))
    assert model_source(recipe, 2) == tmp_path / "elsewhere" / "export"
