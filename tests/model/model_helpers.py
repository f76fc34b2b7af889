"""Helpers for the model-layer tests: tiny Llama / Qwen2 (GQA) / Mistral models (imported as model_helpers)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from prolong.model.attention import register_attention
from prolong.model.io import build_config

VOCAB = 96
# (architecture, num_key_value_heads): MHA Llama, GQA Qwen2 (4 query heads share 2 KV heads), MQA Mistral.
ARCHS = [("llama", 4), ("qwen2", 2), ("mistral", 1)]


def tiny_config(architecture: str, num_key_value_heads: int = 2, **overrides):
    """A 2-layer, 64-wide config of the given architecture (float32, full attention)."""
    return build_config(
        architecture,
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=1024,
        rope_theta=10000.0,
        **overrides,
    )


def tiny_model(
    architecture: str, num_key_value_heads: int = 2, attn: str = "sdpa", seed: int = 0, **overrides
) -> PreTrainedModel:
    """A randomly initialised tiny causal LM; attn is a transformers name or a prolong backend."""
    name = attn if attn in ("sdpa", "eager") else register_attention(attn)
    torch.manual_seed(seed)
    config = tiny_config(architecture, num_key_value_heads, **overrides)
    return AutoModelForCausalLM.from_config(config, attn_implementation=name, dtype=torch.float32)
