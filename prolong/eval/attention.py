"""Attention for chunked prefill without a materialized mask.

During chunked prefill a block of L queries attends to S = past + L keys: all past keys, and its own keys
causally (a bottom-right aligned causal mask). transformers' SDPA path builds that mask as an L x S tensor,
and on CPU a masked SDPA is several times slower than the causal kernel. Here the two parts run as two
mask-free flash-attention calls (past: full; own block: causal) merged by their log-sum-exp, so memory
stays O(L) per head. Used only for unpadded single prompts; padded batches keep the standard masked SDPA.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

NAME = "prolong_chunked_prefill"


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _flash_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                    scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(output [B, H, L, D], logsumexp [B, H, L]) on CPU.

    torch exposes the log-sum-exp only through this aten op (no public API returns it); the result is
    checked against masked SDPA in tests/eval/test_engine.py.
    """
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
    return out, lse


def chunked_prefill_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              attention_mask: torch.Tensor | None, scaling: float | None = None,
                              dropout: float = 0.0, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention function: q [B, H, L, D], k/v [B, Hkv, S, D] -> out [B, L, H, D]."""
    q_len, kv_len = query.shape[2], key.shape[2]
    groups = query.shape[1] // key.shape[1]
    if q_len == kv_len or q_len == 1:  # first block (square causal) or one decoded token (sees everything)
        out = F.scaled_dot_product_attention(query, key, value, is_causal=q_len > 1, scale=scaling,
                                             enable_gqa=groups > 1)
        return out.transpose(1, 2).contiguous(), None
    key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)
    past = kv_len - q_len
    if query.device.type != "cpu":
        from torch.nn.attention.bias import causal_lower_right

        # CUDA kernels take the bottom-right causal bias without materializing it.
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=causal_lower_right(q_len, kv_len),
                                             scale=scaling)
        return out.transpose(1, 2).contiguous(), None
    out_past, lse_past = _flash_with_lse(query, key[:, :, :past], value[:, :, :past], False, scaling)
    out_own, lse_own = _flash_with_lse(query, key[:, :, past:], value[:, :, past:], True, scaling)
    top = torch.maximum(lse_past, lse_own)
    w_past, w_own = torch.exp(lse_past - top).unsqueeze(-1), torch.exp(lse_own - top).unsqueeze(-1)
    out = (out_past * w_past + out_own * w_own) / (w_past + w_own)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make NAME available to every transformers model (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, chunked_prefill_attention)


@contextlib.contextmanager
def use_attention(model: Any, name: str) -> Iterator[None]:
    """Temporarily switch a loaded model's attention implementation (restored even on error)."""
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous
