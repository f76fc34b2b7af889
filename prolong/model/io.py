"""Load and save Hugging Face causal LMs from local directories (safetensors only).

Everything, including a freshly initialised tiny model, goes through AutoModelForCausalLM.from_pretrained,
so the tiny path exercises exactly the code that loads a real Llama-3 checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

from prolong.config import TinyModel
from prolong.hf_dirs import require_model_dir, require_tokenizer_dir
from prolong.layout import check_head_layout
from prolong.model.attention import BACKENDS, register_attention
from prolong.model.rope import YarnScaling, apply_rope_config
from prolong.publish import staged_dir

ARCHITECTURES: dict[str, type[PretrainedConfig]] = {
    "llama": LlamaConfig,
    "qwen2": Qwen2Config,
    "mistral": MistralConfig,
}
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """torch dtype from a torch.dtype or a name such as "bfloat16" / "bf16" / "float32"."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def resolve_attn_implementation(attn_implementation: str | None) -> str:
    """Name to pass to transformers: None/"auto" -> prolong auto backend; a prolong backend name -> that
    backend registered; anything else ("sdpa", "eager", "flash_attention_2", ...) unchanged."""
    if attn_implementation in (None, "auto"):
        return register_attention("auto")
    if attn_implementation in BACKENDS:
        return register_attention(attn_implementation)
    return attn_implementation


def load_model(
    path: str | os.PathLike,
    dtype: torch.dtype | str = torch.float32,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    device: torch.device | str | None = None,
    rope_theta: float | None = None,
    yarn: YarnScaling | Mapping[str, Any] | None = None,
    max_position_embeddings: int | None = None,
) -> PreTrainedModel:
    """Load a causal LM from a local directory, optionally with new RoPE settings: the one model loader.

    Safe by default: local files only (a path that is not a checkpoint directory is a LocalDirError,
    nothing is downloaded), safetensors weights only, the checkpoint's own code only with
    trust_remote_code. dtype: a torch dtype, a name (float32, bf16, ...) or "auto" (the checkpoint's).
    attn_implementation: None for prolong's document-masked attention (backend chosen automatically), a
    prolong backend name (varlen, flash_attn, sdpa_per_doc, causal) to force one, or any name
    transformers knows (sdpa, eager). RoPE changes are applied to the config before the weights load, so
    the rotary embeddings are built with them.
    """
    directory = require_model_dir(path)
    config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code, local_files_only=True)
    if rope_theta is not None or yarn is not None or max_position_embeddings is not None:
        apply_rope_config(
            config, theta=rope_theta, yarn=yarn, max_position_embeddings=max_position_embeddings
        )
    model = AutoModelForCausalLM.from_pretrained(
        directory,
        config=config,
        dtype="auto" if dtype == "auto" else parse_dtype(dtype),
        attn_implementation=resolve_attn_implementation(attn_implementation),
        trust_remote_code=trust_remote_code,
        local_files_only=True,
        use_safetensors=True,
    )
    if device is not None:
        model.to(device)  # type: ignore[arg-type]  # nn.Module.to; transformers' wrapper types it wrongly
    return model


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load the tokenizer saved in a local model (or tokenizer) directory: the one tokenizer loader.

    Local files only (a path that is not a tokenizer directory is a LocalDirError); the checkpoint's own
    tokenizer code only with trust_remote_code.
    """
    return AutoTokenizer.from_pretrained(
        require_tokenizer_dir(path), trust_remote_code=trust_remote_code, local_files_only=True
    )


def save_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, out_dir: str | os.PathLike
) -> Path:
    """Save model (safetensors + config) and tokenizer to `out_dir` atomically.

    Written into a temporary sibling directory first, then renamed into place, so a crash never leaves a
    half-written checkpoint under `out_dir`; an existing `out_dir` is replaced.
    """
    out = Path(out_dir)
    with staged_dir(out) as staged:  # prolong.publish: renamed into place only when complete
        model.save_pretrained(staged.path)
        if tokenizer is not None:
            tokenizer.save_pretrained(staged.path)
        pickled = [p.name for p in staged.path.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
        if pickled:
            raise RuntimeError(f"refusing to publish pickled weights {pickled}; expected safetensors only")
    return out


def build_config(
    architecture: str,
    vocab_size: int,
    hidden_size: int,
    intermediate_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    num_key_value_heads: int,
    max_position_embeddings: int,
    rope_theta: float,
    **overrides: Any,
) -> PretrainedConfig:
    """A standard transformers config for one of the supported architectures (full attention, untied)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {sorted(ARCHITECTURES)}")
    check_head_layout(num_attention_heads, num_key_value_heads, hidden_size)
    kwargs: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "max_position_embeddings": max_position_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(rope_theta)},
        "tie_word_embeddings": False,
    }
    if architecture in ("mistral", "qwen2"):
        kwargs["sliding_window"] = None  # ProLong trains full attention; the Mistral default would be 4096
    kwargs.update(overrides)
    return ARCHITECTURES[architecture](**kwargs)


def init_model(
    spec: TinyModel,
    out_dir: str | os.PathLike,
    seed: int,
    vocab_size: int | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
) -> Path:
    """Write a randomly initialised checkpoint of `spec` (safetensors, config, optional tokenizer).

    vocab_size defaults to the tokenizer's size rounded up to a multiple of 64, which keeps the LM
    head's matmul aligned; without a tokenizer it must be given.
    """
    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir is not None else None
    special: dict[str, Any] = {}
    if tokenizer is not None:
        if vocab_size is None:
            vocab_size = -(-len(tokenizer) // 64) * 64
        if len(tokenizer) > vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but vocab_size is {vocab_size}")
        special = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    if vocab_size is None:
        raise ValueError("give vocab_size or a tokenizer to size the vocabulary by")
    config = build_config(vocab_size=vocab_size, **spec.model_dump(), **special)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return save_model(model, tokenizer, out_dir)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
