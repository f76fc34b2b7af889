"""`prolong model ...` subcommands: typed functions whose docstring is the --help text."""

from __future__ import annotations

from prolong.model.io import count_parameters, init_model, load_model


def init(
    out_dir: str,
    architecture: str = "llama",
    vocab_size: int = 32000,
    hidden_size: int = 64,
    intermediate_size: int = 256,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    max_position_embeddings: int = 65536,
    rope_theta: float = 500000.0,
    tokenizer: str | None = None,
    seed: int = 0,
) -> None:
    """Write a randomly initialised model checkpoint (llama, qwen2 or mistral) to OUT_DIR.

    The directory holds config.json and safetensors weights (plus the tokenizer from --tokenizer when
    given) and loads with transformers' AutoModelForCausalLM.from_pretrained like any real checkpoint.
    """
    path = init_model(
        architecture=architecture,
        out_dir=out_dir,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        rope_theta=rope_theta,
        seed=seed,
        tokenizer_dir=tokenizer,
    )
    n_params = count_parameters(load_model(path, attn_implementation="sdpa"))
    print(f"initialised {architecture} model with {n_params:,} parameters at {path}")
