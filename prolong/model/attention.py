"""Causal attention for packed documents: one adapter between transformers and prolong's kernels.

transformers calls an attention function with q [B, H, Tq, D], k/v [B, H_kv, Tk, D] and keyword
arguments that carry the model family's attention features. `register_attention` puts ONE adapter in
transformers' registry; it reads every keyword once (scaling, dropout, sliding window, soft-capping,
sinks, causality, boundaries), refuses what it cannot compute exactly, and dispatches:

  packed row (batch 1, no cache, boundaries given or position ids restarting at 0)
      -> a document kernel: `document_attention` (below), or a kernel that wraps it, such as the Ulysses
         all-to-all exchange (prolong.parallel.ulysses)
  anything else (padded batches, KV-cache decoding, chunked prefill)
      -> `_dense_attention`: plain causal attention, mask-free for unpadded prompts

Legend: T = tokens of the packed sequence, H = query heads, H_kv = key/value heads, D = head dim.
Document kernel backends:
  varlen        torch.nn.attention.varlen (FlashAttention varlen kernels in torch), CUDA, fp16/bf16
  flash_attn    flash_attn.flash_attn_varlen_func, CUDA, fp16/bf16, when the package is installed
  sdpa_per_doc  one scaled_dot_product_attention call per document (CPU and fallback); the cost is the
                sum of squared document lengths and no [T, T] mask is ever built
  causal        plain causal attention over the whole packed row, boundaries ignored (the kernel of the
                UltraLong `cross_document` batch mode; any backend computes the same on its one segment)

Features per backend (anything else is refused with a message, never dropped):
  sliding window: all; attention-logit soft-capping: flash_attn, sdpa_per_doc, causal;
  attention sinks (gpt-oss `s_aux`): sdpa_per_doc, causal.
Soft-capping and sinks run on an explicit-score path per document (exact, memory [H, L, L] per document
of L tokens), since no fused SDPA kernel can apply them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("varlen", "flash_attn", "sdpa_per_doc", "causal")
ATTENTION_NAME = "prolong"
_HALF_DTYPES = (torch.float16, torch.bfloat16)
# What each backend computes beyond plain causal attention inside documents.
_BACKEND_FEATURES: dict[str, frozenset[str]] = {
    "varlen": frozenset({"sliding_window"}),
    "flash_attn": frozenset({"sliding_window", "softcap"}),
    "sdpa_per_doc": frozenset({"sliding_window", "softcap", "sinks"}),
    "causal": frozenset({"sliding_window", "softcap", "sinks"}),
}
_FEATURE_NAMES = {
    "sliding_window": "`sliding_window` (sliding-window attention)",
    "softcap": "`softcap` (attention-logit soft-capping)",
    "sinks": "`s_aux` (learned attention sinks)",
}
# Registry-name token of each backend. transformers reads meaning into substrings of an implementation
# name ("sdpa" -> SDPA support checks that refuse e.g. gpt-oss; "flash" -> flash-attn imports and
# generation paths), so prolong's names must contain none of them.
_NAME_TOKENS = {"varlen": "varlen", "flash_attn": "fa", "sdpa_per_doc": "per_doc", "causal": "causal"}
_RESERVED_IN_NAMES = ("sdpa", "flash", "flex", "paged", "eager", "|", "/")


class BackendUnavailableError(RuntimeError):
    """A forced attention backend cannot run on this machine/device."""


class UnsupportedAttentionError(ValueError):
    """A model family asks its attention for something prolong cannot compute exactly."""


# ---------------------------------------------------------------------------------------------- backends


def _varlen_problem(device: torch.device) -> str | None:
    if device.type != "cuda" or not torch.cuda.is_available():
        return "needs a CUDA device"
    if importlib.util.find_spec("torch.nn.attention.varlen") is None:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "needs an Ampere or newer GPU (compute capability >= 8.0)"
    return None


def _flash_attn_problem(device: torch.device) -> str | None:
    if device.type != "cuda" or not torch.cuda.is_available():
        return "needs a CUDA device"
    if importlib.util.find_spec("flash_attn") is None:
        return "the flash-attn package is not installed (pip install 'prolong[gpu]')"
    return None


@functools.lru_cache(maxsize=32)
def _problem(backend: str, device: torch.device) -> str | None:
    # Cached: "auto" resolves at every attention call, and the answer cannot change within a process.
    if backend == "varlen":
        return _varlen_problem(device)
    if backend == "flash_attn":
        return _flash_attn_problem(device)
    return None  # sdpa_per_doc and causal run anywhere torch does


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Backends that can run on `device` (default: CUDA when present, else CPU), in order of preference."""
    dev = torch.device(device) if device is not None else _default_device()
    return [b for b in BACKENDS if _problem(b, dev) is None]


def _missing_feature(backend: str, needs: frozenset[str]) -> str | None:
    missing = sorted(needs - _BACKEND_FEATURES[backend])
    return missing[0] if missing else None


@functools.lru_cache(maxsize=64)
def _warn_auto_fallback(feature: str, device: torch.device) -> None:
    log.warning(
        "attention backend auto: the CUDA varlen kernel cannot apply %s; using flash_attn if installed, "
        "else the exact per-document path (slower)",
        _FEATURE_NAMES[feature],
    )


def resolve_backend(
    requested: str = "auto",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    needs: frozenset[str] = frozenset(),
    family: str = "this model",
) -> str:
    """Turn "auto" or a backend name into a backend that runs on `device`, or raise a clear error.

    "auto" picks varlen, then flash_attn, on CUDA with fp16/bf16 tensors (the kernels have no fp32 path),
    and sdpa_per_doc otherwise; among them only one that computes every feature in `needs`
    (sliding_window, softcap, sinks) exactly. It never picks causal: that is a modelling choice, not a
    speed one. A forced backend that lacks a needed feature is an UnsupportedAttentionError naming
    `family`, the argument and the backends that can.
    """
    dev = torch.device(device) if device is not None else _default_device()
    if requested == "auto":
        if dtype is None or dtype in _HALF_DTYPES:
            for backend in ("varlen", "flash_attn"):
                if _problem(backend, dev) is None:
                    missing = _missing_feature(backend, needs)
                    if missing is None:
                        return backend
                    _warn_auto_fallback(missing, dev)
        return "sdpa_per_doc"
    if requested not in BACKENDS:
        hint = " (cross_document is a batch mode, stages[].attention; its kernel is 'causal')" * (
            requested == "cross_document"
        )
        raise ValueError(
            f"unknown attention backend {requested!r}{hint}; choose one of {('auto', *BACKENDS)}"
        )
    problem = _problem(requested, dev)
    if problem is not None:
        raise BackendUnavailableError(
            f"attention backend {requested!r} is not available on {dev}: {problem}. "
            f"Available here: {available_backends(dev)}; use 'auto' to pick the best one."
        )
    if dtype is not None and requested in ("varlen", "flash_attn") and dtype not in _HALF_DTYPES:
        raise BackendUnavailableError(
            f"attention backend {requested!r} needs float16 or bfloat16 tensors, got {dtype}; "
            "load the model in bf16 or use 'sdpa_per_doc'"
        )
    missing = _missing_feature(requested, needs)
    if missing is not None:
        able = [b for b in BACKENDS[:3] if missing in _BACKEND_FEATURES[b]]
        raise UnsupportedAttentionError(
            f"{family} passes {_FEATURE_NAMES[missing]} to its attention, which attention backend "
            f"{requested!r} cannot apply; set training.attention_backend to one of {able} or 'auto'"
        )
    return requested


# ------------------------------------------------------------------------------------- document kernels


def _query_blocks(length: int, window: int | None, block: int) -> Iterator[tuple[int, int, int]]:
    """(q_start, q_end, k_start): query blocks of a causal document and the first key each can see."""
    for q_start in range(0, length, block):
        k_start = 0 if window is None else max(0, q_start - window + 1)
        yield q_start, min(q_start + block, length), k_start


def _visible(
    q_start: int, q_end: int, k_start: int, window: int | None, device: torch.device
) -> torch.Tensor:
    """Bool [Q, K]: which keys [k_start, q_end) each query [q_start, q_end) sees (transformers' rule for a
    sliding window: kv > q - window)."""
    q_pos = torch.arange(q_start, q_end, device=device)[:, None]
    k_pos = torch.arange(k_start, q_end, device=device)[None, :]
    allowed = k_pos <= q_pos
    if window is not None:
        allowed = allowed & (k_pos > q_pos - window)
    return allowed


def _math_attention(
    q_BHQD: torch.Tensor,
    k_BKSD: torch.Tensor,
    v_BKSD: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    softcap: float | None,
    sinks: torch.Tensor | None,
) -> torch.Tensor:
    """Attention with explicit scores -> [B, H, Q, Dv]: soft-capping and sinks exactly as the families'
    eager attention computes them. mask: bool (True = visible) or additive float, [B or 1, 1 or H, Q, S].
    GQA by grouping the query heads (K/V never repeated); softmax in float32 like eager."""
    b, heads, q_len, dim = q_BHQD.shape
    kv_heads = k_BKSD.shape[1]
    groups = heads // kv_heads
    q = q_BHQD.reshape(b, kv_heads, groups, q_len, dim)
    scores = torch.matmul(q, k_BKSD.unsqueeze(2).transpose(-1, -2)) * scale  # [B, K, G, Q, S]
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        mask = (
            mask.unsqueeze(2)
            if mask.shape[1] == 1
            else mask.reshape(mask.shape[0], kv_heads, groups, *mask.shape[2:])
        )
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    if sinks is not None:
        sink = sinks.to(scores.dtype).reshape(1, kv_heads, groups, 1, 1).expand(b, -1, -1, q_len, 1)
        scores = torch.cat([scores, sink], dim=-1)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v_BKSD.dtype)
    if sinks is not None:
        probs = probs[..., :-1]  # the sink takes probability mass and gives no value
    return torch.matmul(probs, v_BKSD.unsqueeze(2)).reshape(b, heads, q_len, -1)


def _causal_document(
    q_LHD: torch.Tensor,
    k_LHD: torch.Tensor,
    v_LHD: torch.Tensor,
    scale: float,
    sliding_window: int | None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention on one document of L tokens -> out_LHD; GQA without repeating K/V."""
    # SDPA's fused kernels only accept 4-D inputs; 3-D silently falls back to the math path, which stores
    # [H, L, L] attention weights (quadratic memory). Strided [1, H, L, D] views are fine for them.
    q, k, v = (x.unsqueeze(0).transpose(1, 2) for x in (q_LHD, k_LHD, v_LHD))
    gqa = q.shape[1] != k.shape[1]
    length = q.shape[2]
    explicit = softcap is not None or sinks is not None
    window = sliding_window if sliding_window is not None and length > sliding_window else None
    if window is None and not explicit:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
        return out[0].transpose(0, 1)
    # Query blocks against only the keys they can see: masks of [block, block + window] (sliding window,
    # Mistral and some Qwen2/Gemma layers) instead of [L, L].
    block = min(window or 1024, 2048)
    outs = []
    for q_start, q_end, k_start in _query_blocks(length, window, block):
        mask = _visible(q_start, q_end, k_start, window, q.device)[None, None]
        q_b, k_b, v_b = q[:, :, q_start:q_end], k[:, :, k_start:q_end], v[:, :, k_start:q_end]
        if explicit:
            out = _math_attention(q_b, k_b, v_b, mask, scale, softcap, sinks)
        else:
            out = F.scaled_dot_product_attention(q_b, k_b, v_b, attn_mask=mask, scale=scale, enable_gqa=gqa)
        outs.append(out[0].transpose(0, 1))
    return torch.cat(outs, dim=0)


def _sdpa_per_doc(q_THD, k_THD, v_THD, cu_seqlens, scale, sliding_window, softcap, sinks) -> torch.Tensor:
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    # split (not slicing): its backward is one concatenation, instead of one full-size zero-filled gradient
    # per document, which would cost O(n_docs * T) with hundreds of short SFT documents.
    docs = zip(q_THD.split(lens), k_THD.split(lens), v_THD.split(lens), strict=True)
    outs = [
        _causal_document(q, k, v, scale, sliding_window, softcap, sinks) for q, k, v in docs if q.shape[0] > 0
    ]
    return torch.cat(outs, dim=0)


def _varlen(q_THD, k_THD, v_THD, cu_seqlens, max_seqlen, scale, sliding_window, softcap) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    # window (left, 0) is causal; transformers' sliding rule kv > q - W means W - 1 keys to the left.
    left = -1 if sliding_window is None else sliding_window - 1
    out = varlen_attn(
        q_THD,
        k_THD,
        v_THD,
        cu_seqlens,
        cu_seqlens,
        max_seqlen,
        max_seqlen,
        scale=scale,
        window_size=(left, 0),
        enable_gqa=q_THD.shape[1] != k_THD.shape[1],
    )
    assert isinstance(out, torch.Tensor)  # a tuple only with return_aux
    return out


def _flash_attn(q_THD, k_THD, v_THD, cu_seqlens, max_seqlen, scale, sliding_window, softcap) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    left = -1 if sliding_window is None else sliding_window - 1
    # flash-attn handles GQA natively when H is a multiple of H_kv; softcap=0 means none.
    return flash_attn_varlen_func(
        q_THD,
        k_THD,
        v_THD,
        cu_seqlens,
        cu_seqlens,
        max_seqlen,
        max_seqlen,
        dropout_p=0.0,
        softmax_scale=scale,
        causal=True,
        window_size=(left, 0),
        softcap=0.0 if softcap is None else float(softcap),
    )


def _features(
    sliding_window: int | None, softcap: float | None, sinks: torch.Tensor | None
) -> frozenset[str]:
    named = {"sliding_window": sliding_window, "softcap": softcap, "sinks": sinks}
    return frozenset(name for name, value in named.items() if value is not None)


def document_attention(
    q_THD: torch.Tensor,
    k_THD: torch.Tensor,
    v_THD: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float,
    backend: str = "auto",
    sliding_window: int | None = None,
    *,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention inside each document of a packed sequence; returns out_THD [T, H, D].

    q_THD [T, H, D], k_THD/v_THD [T, H_kv, D] with H a multiple of H_kv; cu_seqlens int32 [n_docs + 1]
    covering exactly T tokens. softcap: scores become softcap * tanh(scores / softcap) (Gemma-2);
    sinks [H]: one learned logit per head that joins every softmax and contributes no value (gpt-oss).
    This is the kernel the adapter calls for packed rows, and the Ulysses wrapper after its all-to-all.
    """
    if q_THD.dim() != 3 or k_THD.dim() != 3 or v_THD.dim() != 3:
        raise ValueError(
            f"expected [T, heads, D] tensors, got q {tuple(q_THD.shape)}, k {tuple(k_THD.shape)}, "
            f"v {tuple(v_THD.shape)}"
        )
    num_tokens, num_heads, _ = q_THD.shape
    if num_heads % k_THD.shape[1] != 0:
        raise ValueError(
            f"query heads ({num_heads}) must be a multiple of key/value heads ({k_THD.shape[1]})"
        )
    if sinks is not None and sinks.shape != (num_heads,):
        raise ValueError(f"sinks must hold one logit per query head ({num_heads}), got {tuple(sinks.shape)}")
    needs = _features(sliding_window, softcap, sinks)
    backend = resolve_backend(backend, q_THD.device, q_THD.dtype, needs)
    if backend == "causal":
        return _causal_document(q_THD, k_THD, v_THD, scale, sliding_window, softcap, sinks)
    cu_seqlens = cu_seqlens.to(device=q_THD.device, dtype=torch.int32)
    covered = int(cu_seqlens[-1])
    if covered != num_tokens:
        raise ValueError(
            f"cu_seqlens covers {covered} tokens but the query has {num_tokens}; under sequence parallelism "
            "the attention must run after the all-to-all, on the full sequence"
        )
    if backend == "sdpa_per_doc":
        return _sdpa_per_doc(q_THD, k_THD, v_THD, cu_seqlens, scale, sliding_window, softcap, sinks)
    kernel = _varlen if backend == "varlen" else _flash_attn
    # The CUDA kernels want densely packed [T, heads, D]; inputs from transformers are transposed views.
    q_THD, k_THD, v_THD = (x.contiguous() for x in (q_THD, k_THD, v_THD))
    return kernel(q_THD, k_THD, v_THD, cu_seqlens, int(max_seqlen), scale, sliding_window, softcap)


class DocumentKernel(Protocol):
    """The signature of `document_attention`; a kernel that wraps it (the Ulysses exchange, the planner's
    stand-in) plugs into the adapter with `register_attention(kernel=..., kernel_name=...)`."""

    def __call__(
        self,
        q_THD: torch.Tensor,
        k_THD: torch.Tensor,
        v_THD: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        scale: float,
        backend: str = "auto",
        sliding_window: int | None = None,
        *,
        softcap: float | None = None,
        sinks: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Document boundaries of one packed row from position ids that restart at 0 per document."""
    pos = position_ids.reshape(-1)
    starts = torch.nonzero(pos == 0).flatten()
    if starts.numel() == 0 or int(starts[0]) != 0:
        starts = torch.cat([torch.zeros(1, dtype=starts.dtype, device=pos.device), starts])
    end = torch.tensor([pos.numel()], dtype=starts.dtype, device=pos.device)
    return torch.cat([starts, end]).to(torch.int32)


# ------------------------------------------------------------------------ dense path (no boundaries)


def _flash_with_lse(q, k, v, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(output [B, H, L, D], logsumexp [B, H, L]) on CPU.

    torch exposes the log-sum-exp only through this aten op (no public API returns it); the merge is
    checked against masked SDPA in tests/model/test_attention.py. The op gives no gradient to the
    log-sum-exp, so the merge is used only without autograd.
    """
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
    return out, lse


def _mask_free_prefill(query, key, value, scale: float) -> torch.Tensor:
    """Tq queries that are the last of Tk keys, no padding, no window: two mask-free calls (all past keys;
    own block causal) merged by their log-sum-exp, instead of an [Tq, Tk] mask -> [B, H, Tq, D]."""
    q_len, kv_len = query.shape[2], key.shape[2]
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    if query.device.type != "cpu":
        from torch.nn.attention.bias import causal_lower_right

        # CUDA kernels take the bottom-right causal bias without materializing it.
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=causal_lower_right(q_len, kv_len), scale=scale
        )
    past = kv_len - q_len
    out_past, lse_past = _flash_with_lse(query, key[:, :, :past], value[:, :, :past], False, scale)
    out_own, lse_own = _flash_with_lse(query, key[:, :, past:], value[:, :, past:], True, scale)
    top = torch.maximum(lse_past, lse_own)
    w_past, w_own = torch.exp(lse_past - top).unsqueeze(-1), torch.exp(lse_own - top).unsqueeze(-1)
    return ((out_past * w_past + out_own * w_own) / (w_past + w_own)).to(query.dtype)


def _dense_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scale: float,
    sliding_window: int | None,
    softcap: float | None,
    sinks: torch.Tensor | None,
) -> torch.Tensor:
    """Causal attention for generation/evaluation ([B, H, Tq, D], optional padding mask, KV cache) ->
    [B, Tq, H, D]. Queries are the last Tq of the Tk keys (bottom-right aligned causal mask), as with a
    KV cache; an unpadded prompt block runs mask-free (chunked prefill)."""
    gqa = query.shape[1] != key.shape[1]
    q_len, kv_len = query.shape[2], key.shape[2]
    explicit = softcap is not None or sinks is not None
    windowed = sliding_window is not None and kv_len > sliding_window
    if attention_mask is None and not windowed and not explicit:
        if q_len == kv_len or q_len == 1:  # square causal block, or one decoded token that sees everything
            out = F.scaled_dot_product_attention(
                query, key, value, is_causal=q_len > 1, scale=scale, enable_gqa=gqa
            )
            return out.transpose(1, 2)
        if not (torch.is_grad_enabled() and any(x.requires_grad for x in (query, key, value))):
            return _mask_free_prefill(query, key, value, scale).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4:
        mask = attention_mask  # already prepared by the caller
    else:
        q_pos = torch.arange(kv_len - q_len, kv_len, device=query.device)[:, None]
        k_pos = torch.arange(kv_len, device=query.device)[None, :]
        allowed = k_pos <= q_pos
        if sliding_window is not None:
            allowed = allowed & (k_pos > q_pos - sliding_window)
        mask = allowed[None, None]
        if attention_mask is not None:
            padding = attention_mask[:, -kv_len:].to(device=query.device, dtype=torch.bool)
            # A padded query may see no key at all; letting it see itself avoids NaN in ignored rows.
            mask = (mask & padding[:, None, None, :]) | (k_pos == q_pos)[None, None]
    if explicit:
        return _math_attention(query, key, value, mask, scale, softcap, sinks).transpose(1, 2)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return out.transpose(1, 2)


# ------------------------------------------------------------------------------------- the one adapter

# Keywords transformers may pass that do not change what attention computes.
_NO_EFFECT_KWARGS = frozenset(
    {
        "output_hidden_states",
        "output_router_logits",
        "num_items_in_batch",
        "use_cache",
        "return_dict",
        "cache_position",
        "past_key_values",
        "past_key_value",
        "position_embeddings",
        "layer_idx",
        "logits_to_keep",
    }
)
_BOUNDARY_KWARGS = frozenset(
    {"position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"}
)
# Layer types that mix tokens only through this attention (or not at all): a packed row stays exact.
_PACKABLE_LAYER_TYPES = frozenset({"full_attention", "sliding_attention", "dense", "sparse", "moe"})
# Attention layer types whose pattern lives in a mask prolong does not build (its adapter gets no mask).
_MASK_PATTERN_LAYER_TYPES = frozenset(
    {
        "chunked_attention",
        "window_attention",
        "indexed_attention",
        "compressed_sparse_attention",
        "heavily_compressed_attention",
        "minimax_m3_sparse",
        "reference_sliding_attention",
    }
)


def _family(module: torch.nn.Module) -> str:
    config = getattr(module, "config", None)
    model_type = getattr(config, "model_type", None)
    return f"{model_type} ({type(module).__name__})" if model_type else type(module).__name__


def _refuse(family: str, argument: str, what: str) -> UnsupportedAttentionError:
    return UnsupportedAttentionError(
        f"{family} passes {argument} to its attention: {what}. prolong does not change a model's math "
        "silently; use attn_implementation='eager' for this model outside prolong's training, or report "
        "the family so it can be implemented"
    )


def _check_model_config(family: str, module: torch.nn.Module, packed: bool) -> None:
    """Attention patterns defined by the config rather than by keywords (masks, non-attention mixers)."""
    config = getattr(module, "config", None)
    if config is None:
        return
    if getattr(config, "attention_chunk_size", None):
        raise _refuse(
            family,
            "chunked attention (config.attention_chunk_size)",
            "its pattern lives in a mask that prolong's attention does not build",
        )
    layer_types = list(getattr(config, "layer_types", None) or [])
    for layer_type in set(layer_types) & _MASK_PATTERN_LAYER_TYPES:
        raise _refuse(
            family,
            f"layer type {layer_type!r}",
            "its pattern lives in a mask that prolong's attention does not build",
        )
    if packed:
        for layer_type in sorted(set(layer_types) - _PACKABLE_LAYER_TYPES):
            raise UnsupportedAttentionError(
                f"{family} has {layer_type!r} layers (config.layer_types), which carry state across "
                "tokens outside attention: packed documents would see each other there. Use "
                "stages[].attention: cross_document (one causal sequence), or a family whose layers are "
                "all attention"
            )


def check_attention_support(model: torch.nn.Module, documents: bool = True) -> None:
    """Refuse, before any step runs, a model whose attention prolong cannot compute exactly.

    - Its attention layers do not call transformers' attention registry (is_backend_compatible() is
      False: bloom's ALiBi, bamba's and other hybrids' layers): prolong's attention would never run, and
      packed documents would see each other.
    - Its config defines an attention pattern through masks (chunked attention and the like).
    - documents (rows of several documents, the `document` batch mode): it has layers that mix tokens
      outside attention (convolutions, linear attention, state-space layers), which would carry one
      document into the next. The adapter repeats these config checks at every call, but a model whose
      attention is never called (all layers convolutional) can only be caught here.
    Per-call features (windows, soft-capping, sinks, causality, unknown keywords) are checked by the
    adapter.
    """
    from transformers import PreTrainedModel

    hf_model = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if hf_model is None:
        raise TypeError(f"{type(model).__name__} holds no Hugging Face PreTrainedModel")
    family = _family(hf_model)
    if not hf_model.is_backend_compatible():
        raise UnsupportedAttentionError(
            f"{family} does not route its attention through transformers' attention registry "
            "(_supports_attention_backend is False), so prolong's document attention would never be called "
            "and packed documents would attend to each other; use a family whose attention does"
        )
    _check_model_config(family, hf_model, packed=documents)


def _call_settings(
    family: str,
    module: torch.nn.Module,
    query: torch.Tensor,
    scaling: float | None,
    dropout: float,
    sliding_window: int | None,
    softcap: float | None,
    s_aux: torch.Tensor | None,
    is_causal: bool | None,
    kwargs: dict[str, Any],
) -> tuple[float, int | None, float | None, torch.Tensor | None]:
    """The one place that reads transformers' keywords: (scale, sliding_window, softcap, sinks) or a
    clear refusal naming the family, the argument and what to do."""
    if dropout:
        raise _refuse(
            family,
            f"`dropout`={dropout}",
            "prolong attention does not implement attention "
            "dropout; set attention_dropout=0 in the model config",
        )
    if is_causal is False or getattr(module, "is_causal", True) is False:
        raise _refuse(family, "is_causal=False", "prolong attention is causal (decoders only)")
    if kwargs.get("output_attentions"):
        raise _refuse(family, "output_attentions=True", "prolong attention returns no attention weights")
    if kwargs.get("seq_idx") is not None and kwargs.get("cu_seq_lens_q") is None:
        raise _refuse(
            family,
            "`seq_idx`",
            "pass the document boundaries as cu_seq_lens_q (prolong.model.batch.attention_kwargs) instead",
        )
    for key in sorted(set(kwargs) - _NO_EFFECT_KWARGS - _BOUNDARY_KWARGS - {"output_attentions", "seq_idx"}):
        if kwargs[key] is not None:
            raise _refuse(family, f"`{key}`", "prolong's attention does not implement it")
    cu_k, cu_q = kwargs.get("cu_seq_lens_k"), kwargs.get("cu_seq_lens_q")
    if cu_k is not None and cu_k is not cu_q and (cu_q is None or not torch.equal(cu_k, cu_q)):
        raise _refuse(
            family,
            "cu_seq_lens_k different from cu_seq_lens_q",
            "prolong attention is self-attention inside documents; pass the same boundaries for both",
        )
    if sliding_window is not None and int(sliding_window) <= 0:
        raise _refuse(family, f"sliding_window={sliding_window}", "a window must be a positive length")
    if softcap is not None and float(softcap) <= 0:
        raise _refuse(family, f"softcap={softcap}", "soft-capping needs a positive cap")
    if s_aux is not None and (s_aux.dim() != 1 or s_aux.shape[0] != query.shape[1]):
        raise _refuse(
            family,
            f"`s_aux` of shape {tuple(s_aux.shape)}",
            f"prolong implements sinks as one logit per query head ({query.shape[1]})",
        )
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    window = int(sliding_window) if sliding_window is not None else None
    return scale, window, (float(softcap) if softcap is not None else None), s_aux


def _make_attention_function(
    backend: str, kernel: DocumentKernel, require_boundaries: bool
) -> Callable[..., tuple[torch.Tensor, None]]:
    def prolong_attention(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        sliding_window: int | None = None,
        softcap: float | None = None,
        s_aux: torch.Tensor | None = None,
        is_causal: bool | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        """transformers attention function: query [B, H, Tq, D], key/value [B, H_kv, Tk, D] -> [B, Tq, H, D].

        Packed rows (one row, no cache, cu_seq_lens_q given or position ids restarting at 0) go to the
        document kernel; anything else (batches with padding, KV-cache decoding) to `_dense_attention`.
        """
        family = _family(module)
        scale, window, cap, sinks = _call_settings(
            family, module, query, scaling, dropout, sliding_window, softcap, s_aux, is_causal, kwargs
        )
        batch_size, _, q_len, _ = query.shape
        kv_len = key.shape[2]
        cu_seqlens = kwargs.get("cu_seq_lens_q")
        max_seqlen = kwargs.get("max_length_q")
        packed = batch_size == 1 and q_len == kv_len
        mask_is_trivial = attention_mask is None or (attention_mask.dim() == 2 and bool(attention_mask.all()))
        if require_boundaries and cu_seqlens is None:
            raise ValueError(
                f"{family}: this attention ({kernel_label}) needs the batch's global document boundaries "
                "(cu_seq_lens_q): call the model with prolong.model.batch.attention_kwargs(batch); it never "
                "derives local boundaries from position ids"
            )
        if cu_seqlens is None and packed and mask_is_trivial:
            position_ids = kwargs.get("position_ids")
            if backend == "causal":
                cu_seqlens = torch.tensor([0, q_len], dtype=torch.int32, device=query.device)
            elif position_ids is not None and position_ids.dim() == 2 and position_ids.shape == (1, q_len):
                # No explicit boundaries: restarts of the position ids (0 starts a document) give them.
                cu_seqlens = cu_seqlens_from_position_ids(position_ids)
        # several documents in one row (a single segment is one sequence to every kind of layer)
        several = cu_seqlens is not None and backend != "causal" and cu_seqlens.numel() > 2
        _check_model_config(family, module, packed=several)
        if cu_seqlens is None:
            return _dense_attention(query, key, value, attention_mask, scale, window, cap, sinks), None
        if not packed:
            raise ValueError(
                f"cu_seq_lens_q needs one packed row with no KV cache; got batch {batch_size}, "
                f"{q_len} queries, {kv_len} keys (pass use_cache=False)"
            )
        if not mask_is_trivial:
            raise UnsupportedAttentionError(
                f"{family} passes an attention mask together with the document boundaries (cu_seq_lens_q): "
                "either the caller padded a packed row, or the family builds its own mask, which prolong "
                "cannot combine with packing; pass a packed row without attention_mask"
            )
        if max_seqlen is None:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        resolved = resolve_backend(backend, query.device, query.dtype, _features(window, cap, sinks), family)
        out_THD = kernel(
            query[0].transpose(0, 1),
            key[0].transpose(0, 1),
            value[0].transpose(0, 1),
            cu_seqlens,
            int(max_seqlen),
            scale,
            backend=resolved,
            sliding_window=window,
            softcap=cap,
            sinks=sinks,
        )
        return out_THD.unsqueeze(0), None

    kernel_label = getattr(kernel, "__name__", None) or getattr(
        getattr(kernel, "func", None), "__name__", "kernel"
    )
    prolong_attention.__name__ = f"prolong_attention_{backend}"
    return prolong_attention


def attention_name(
    backend: str = "auto", kernel_name: str | None = None, require_boundaries: bool = False
) -> str:
    """Registry name of the adapter bound to (backend, kernel, require_boundaries).

    "prolong" for the auto backend with document_attention, "prolong_<backend>" for a forced one (the
    backend's token: per_doc, varlen, fa, causal), "prolong_<kernel_name>..." for a replacement kernel,
    and a "_strict" suffix when calls without boundaries are refused.
    """
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {('auto', *BACKENDS)}")
    parts = [ATTENTION_NAME]
    if kernel_name:
        parts.append(kernel_name)
    if backend != "auto":
        parts.append(_NAME_TOKENS[backend])
    if require_boundaries:
        parts.append("strict")
    name = "_".join(parts)
    reserved = [word for word in _RESERVED_IN_NAMES if word in name.lower()]
    if reserved:
        raise ValueError(
            f"attention name {name!r} contains {reserved}, which transformers gives a meaning to"
        )
    return name


def register_attention(
    backend: str = "auto",
    device: torch.device | str | None = None,
    *,
    kernel: DocumentKernel | None = None,
    kernel_name: str | None = None,
    require_boundaries: bool = False,
) -> str:
    """Register prolong's attention adapter with transformers; returns the `attn_implementation` name.

    "auto" chooses the backend at each call from the device and dtype of the query (and the features
    the family asks for), so a model loaded on CPU and moved to a GPU picks up the GPU kernel. A forced
    backend is checked now against `device` (default: CUDA when present, else CPU) and raises
    BackendUnavailableError if it cannot run there.

    kernel/kernel_name: plug another document kernel (same signature as document_attention, e.g. the
    Ulysses exchange) into the same adapter. require_boundaries: refuse calls without cu_seq_lens_q
    instead of deriving boundaries from position ids or running the dense path (Ulysses: local position
    ids cannot tell where the global documents are).

    Why names encode what is bound: transformers' AttentionInterface is one process-global dict, and a
    model finds its function by name at every call. If one fixed name were re-registered with new
    bindings (a new process group, a new stage's mesh), every model already pointing at that name would
    silently switch to them. So the name is a function of everything the registered function binds:
    backend, kernel_name (which the caller must make unique for its bindings, e.g. the process group's
    name) and require_boundaries. Registering the same name again registers the same behaviour.
    """
    if backend != "auto":
        resolve_backend(backend, device)
    if (kernel is None) != (kernel_name is None):
        raise ValueError("pass kernel and kernel_name together: the name must say which kernel is bound")
    name = attention_name(backend, kernel_name, require_boundaries)
    AttentionInterface.register(
        name, _make_attention_function(backend, kernel or document_attention, require_boundaries)
    )
    # Without a mask function transformers drops the 2D padding mask for custom attention names. The
    # flash-attention one passes padding through as [B, Tk] and returns None otherwise: it never builds a
    # [T, T] mask for packed training sequences. (Guarded by test_generation_with_cache_and_padding.)
    AttentionMaskInterface.register(name, flash_attention_mask)
    return name


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
