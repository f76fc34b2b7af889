"""Model layer: load/save HF decoders, RoPE/YaRN, document-masked attention, chunked loss."""

from prolong.model.attention import (
    BACKENDS,
    BackendUnavailableError,
    UnsupportedAttentionError,
    available_backends,
    document_attention,
    register_attention,
    resolve_backend,
)
from prolong.model.batch import IGNORE_INDEX, PackedBatch, attention_kwargs, make_packed_batch
from prolong.model.io import init_model, load_model, load_tokenizer, save_model
from prolong.model.loss import CausalLMWithChunkedLoss, causal_lm_loss, chunked_cross_entropy
from prolong.model.rope import YarnScaling, apply_rope_config, set_model_rope, suggest_rope_theta

__all__ = [
    "BACKENDS",
    "IGNORE_INDEX",
    "BackendUnavailableError",
    "CausalLMWithChunkedLoss",
    "PackedBatch",
    "UnsupportedAttentionError",
    "YarnScaling",
    "apply_rope_config",
    "attention_kwargs",
    "available_backends",
    "causal_lm_loss",
    "chunked_cross_entropy",
    "document_attention",
    "init_model",
    "load_model",
    "load_tokenizer",
    "make_packed_batch",
    "register_attention",
    "resolve_backend",
    "save_model",
    "set_model_rope",
    "suggest_rope_theta",
]
