"""One check per layout rule (prolong/layout.py), and every place that needs it says the same thing."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from prolong.config import RecipeError, TinyModel, derived_numbers, load_recipe
from prolong.errors import UserError
from prolong.layout import check_head_layout, validate_sequence_parallel
from prolong.model.io import build_config


@pytest.mark.parametrize(
    ("sp", "world", "heads", "kv_heads", "message"),
    [
        (0, 8, 32, 8, "must be at least 1"),
        (3, 8, 32, 8, "does not divide the world size 8"),
        (8, 8, 12, 4, "does not divide the model's 12 attention heads"),
        (2, 8, 12, 5, "must be a multiple of num_key_value_heads=5"),
    ],
)
def test_sequence_parallel_refusals(sp: int, world: int, heads: int, kv_heads: int, message: str) -> None:
    with pytest.raises(UserError, match=message):
        validate_sequence_parallel(sp, world, heads, kv_heads)


def test_valid_layouts_pass_and_unknown_parts_are_not_checked() -> None:
    validate_sequence_parallel(8, 64, 32, 8)
    validate_sequence_parallel(3, 6)  # heads not known yet (a checkpoint's config is read later)
    validate_sequence_parallel(4, num_attention_heads=32)  # no world size yet (recipe validation)


def test_head_layout() -> None:
    check_head_layout(32, 8, 4096)
    with pytest.raises(UserError, match="hidden_size=100 must be a multiple of num_attention_heads=8"):
        check_head_layout(8, 2, 100)


def test_every_caller_uses_the_same_check(tmp_path) -> None:
    """The recipe schema, the tiny-model builder and the derived numbers report the rule's own words."""
    with pytest.raises(ValidationError, match="must be a multiple of num_key_value_heads=3"):
        TinyModel(num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(UserError, match="must be a multiple of num_key_value_heads=3"):
        build_config("llama", 256, 64, 172, 2, 4, 3, 512, 10000.0)
    recipe = load_recipe("prolong-8b")
    with pytest.raises(RecipeError, match="stage .stage2-512k.: sequence_parallel=8 does not divide the world size 4"):
        derived_numbers(recipe, 4)
