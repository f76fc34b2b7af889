"""The rules a model's head layout and a run's parallel layout must satisfy, each checked in one place.

Torch-free, so that the recipe schema (config.py), the tiny-model builder, the device mesh, `parallelize`
and the planner all call the same functions and say the same thing when a layout cannot work.
"""

from __future__ import annotations

from prolong.errors import UserError


def check_head_layout(num_attention_heads: int, num_key_value_heads: int, hidden_size: int | None = None) -> None:
    """Grouped-query attention needs whole query-head groups per KV head (and whole heads in the width)."""
    if num_key_value_heads < 1 or num_attention_heads % num_key_value_heads:
        raise UserError(
            f"num_attention_heads={num_attention_heads} must be a multiple of "
            f"num_key_value_heads={num_key_value_heads} (grouped-query attention)"
        )
    if hidden_size is not None and hidden_size % num_attention_heads:
        raise UserError(
            f"hidden_size={hidden_size} must be a multiple of num_attention_heads={num_attention_heads}"
        )


def validate_sequence_parallel(
    sp: int,
    world_size: int | None = None,
    num_attention_heads: int | None = None,
    num_key_value_heads: int | None = None,
) -> None:
    """Refuse an SP degree that cannot work, before anything starts; the message says how to fix it.

    Each part is checked when it is known: the world size at launch, the heads once the model's config
    is read (a recipe without a world size still gets the head check)."""
    if sp < 1:
        raise UserError(f"sequence_parallel={sp} must be at least 1")
    if world_size is not None and world_size % sp:
        raise UserError(
            f"sequence_parallel={sp} does not divide the world size {world_size}; launch a multiple of "
            f"{sp} processes (torchrun --nproc_per_node) or lower sequence_parallel"
        )
    if num_attention_heads is not None and num_attention_heads % sp:
        raise UserError(
            f"sequence_parallel={sp} does not divide the model's {num_attention_heads} attention heads "
            "(Ulysses gives each rank whole heads); choose a divisor of the head count"
        )
    if num_attention_heads is not None and num_key_value_heads is not None:
        check_head_layout(num_attention_heads, num_key_value_heads)
