"""`prolong model ...` subcommands: typed functions whose docstring is the --help text."""

from __future__ import annotations

from typing import Any

from prolong.config import TinyModel, with_overrides
from prolong.errors import UserError
from prolong.model.io import count_parameters, init_model, load_model


def _default(field: str) -> Any:
    """TinyModel's default, so the flags and recipes share one set of defaults."""
    return TinyModel.model_fields[field].default


def init(
    out_dir: str,
    architecture: str = _default("architecture"),
    vocab_size: int | None = None,
    hidden_size: int = _default("hidden_size"),
    intermediate_size: int = _default("intermediate_size"),
    num_hidden_layers: int = _default("num_hidden_layers"),
    num_attention_heads: int = _default("num_attention_heads"),
    num_key_value_heads: int = _default("num_key_value_heads"),
    max_position_embeddings: int = _default("max_position_embeddings"),
    rope_theta: float = _default("rope_theta"),
    tokenizer: str | None = None,
    seed: int = 0,
) -> None:
    """Write a randomly initialised model checkpoint (llama, qwen2 or mistral) to OUT_DIR.

    The shape flags are the fields of a recipe's `model.init` block, with the same defaults. The
    directory holds config.json and safetensors weights (plus the tokenizer from --tokenizer when
    given) and loads with transformers' AutoModelForCausalLM.from_pretrained like any real checkpoint.
    --vocab-size: default the tokenizer's size rounded up to a multiple of 64 (give one of the two).
    """
    shape = {name: value for name, value in locals().items() if name in TinyModel.model_fields}
    if vocab_size is None and tokenizer is None:
        raise UserError("give --vocab-size or --tokenizer (the vocabulary is sized by the tokenizer)")
    spec = with_overrides(TinyModel(), shape, "prolong model init")
    path = init_model(spec, out_dir, seed=seed, vocab_size=vocab_size, tokenizer_dir=tokenizer)
    n_params = count_parameters(load_model(path, attn_implementation="sdpa"))
    print(f"initialised {architecture} model with {n_params:,} parameters at {path}")
