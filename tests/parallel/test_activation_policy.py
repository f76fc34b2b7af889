"""The recipe switches of the activation policies: training defaults, stage overrides, auto, refusals."""

from __future__ import annotations

import pytest
import yaml

from prolong.config import K, RecipeError, load_recipe, recipe_from_dict, resolve_recipe_path, save_recipe
from prolong.errors import UserError
from prolong.parallel.parallelize import ActivationPolicy, stage_activation_policy


def recipe(training: dict | None = None, **stage_fields: object):
    """tiny-smoke with `training` updates and fields set on its stage 1 (seq_len 512)."""
    path = resolve_recipe_path("tiny-smoke")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data.setdefault("training", {}).update(training or {})
    data["stages"][1].update(stage_fields)
    return recipe_from_dict(data, str(path))


def policy(spec, index: int = 1) -> ActivationPolicy:
    return stage_activation_policy(spec.training, spec.stages[index], index)


def test_defaults_keep_todays_math_on_short_stages() -> None:
    spec = recipe()
    assert spec.training.tiled_mlp == "auto" and spec.training.offload_activations is False
    assert policy(spec) == ActivationPolicy(activation_checkpointing=True)


def test_auto_tiles_from_32k_tokens_per_rank() -> None:
    assert policy(recipe(seq_len=64 * K, tokens_per_step=64 * K)).tiled_mlp
    # SP 2 halves the tokens per rank: 32K per rank is still tiled, 16K is not
    assert policy(recipe(seq_len=64 * K, tokens_per_step=64 * K, sequence_parallel=2)).tiled_mlp
    assert not policy(recipe(seq_len=32 * K, tokens_per_step=32 * K, sequence_parallel=2)).tiled_mlp


def test_stage_overrides_training() -> None:
    spec = recipe({"offload_activations": True, "tiled_mlp": True, "mlp_tile_tokens": "2K"}, tiled_mlp=False)
    assert policy(spec) == ActivationPolicy(True, True, False, 2048)
    assert policy(spec, index=2) == ActivationPolicy(True, True, True, 2048)  # stage 2 follows training
    spec = recipe(offload_activations=False, tiled_mlp="auto")
    assert policy(spec) == ActivationPolicy(True, False, False, None)


def test_offload_without_checkpointing_names_the_stage() -> None:
    with pytest.raises(UserError, match=r"stages\.1 \('stage1-512'\).*activation_checkpointing: true"):
        policy(recipe(offload_activations=True, activation_checkpointing=False))


def test_bad_values_are_refused() -> None:
    with pytest.raises(RecipeError, match="tiled_mlp"):
        recipe({"tiled_mlp": "sometimes"})
    with pytest.raises(RecipeError, match="mlp_tile_tokens"):
        recipe({"mlp_tile_tokens": 0})


def test_saved_recipe_round_trips(tmp_path) -> None:
    spec = recipe({"tiled_mlp": False}, offload_activations=True, tiled_mlp="auto")
    save_recipe(spec, tmp_path / "recipe.yaml")
    again = load_recipe(tmp_path / "recipe.yaml")
    assert policy(again) == policy(spec)
