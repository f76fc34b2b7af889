"""Document-masked causal attention, plugged into transformers' attention-function registry.

Legend: T = tokens of the packed sequence, H = query heads, H_kv = key/value heads, D = head dim.
Backends:
  varlen          torch.nn.attention.varlen (FlashAttention varlen kernels in torch), CUDA, fp16/bf16
  flash_attn      flash_attn.flash_attn_varlen_func, CUDA, fp16/bf16, when the package is installed
  sdpa_per_doc    one scaled_dot_product_attention call per document (CPU and fallback); the cost is the
                  sum of squared document lengths and no [T, T] mask is ever built
  cross_document  plain causal attention over the whole packed sequence (UltraLong), boundaries ignored
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

BACKENDS: tuple[str, ...] = ("varlen", "flash_attn", "sdpa_per_doc", "cross_document")
ATTENTION_NAME = "prolong"
_HALF_DTYPES = (torch.float16, torch.bfloat16)


class BackendUnavailableError(RuntimeError):
    """A forced attention backend cannot run on this machine/device."""


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
    return None  # sdpa_per_doc and cross_document run anywhere torch does


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Backends that can run on `device` (default: CUDA when present, else CPU), in order of preference."""
    dev = torch.device(device) if device is not None else _default_device()
    return [b for b in BACKENDS if _problem(b, dev) is None]


def resolve_backend(
    requested: str = "auto",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> str:
    """Turn "auto" or a backend name into a backend that runs on `device`, or raise a clear error.

    "auto" picks varlen, then flash_attn, on CUDA with fp16/bf16 tensors (the kernels have no fp32 path),
    and sdpa_per_doc otherwise. It never picks cross_document: that is a modelling choice, not a speed one.
    """
    dev = torch.device(device) if device is not None else _default_device()
    if requested == "auto":
        if dtype is None or dtype in _HALF_DTYPES:
            for backend in ("varlen", "flash_attn"):
                if _problem(backend, dev) is None:
                    return backend
        return "sdpa_per_doc"
    if requested not in BACKENDS:
        raise ValueError(f"unknown attention backend {requested!r}; choose one of {('auto', *BACKENDS)}")
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
    return requested


def _causal_sdpa(
    q_LHD: torch.Tensor, k_LHD: torch.Tensor, v_LHD: torch.Tensor, scale: float, sliding_window: int | None
) -> torch.Tensor:
    """Causal SDPA on one document of L tokens -> out_LHD; GQA through enable_gqa (K/V never repeated)."""
    # SDPA's fused kernels only accept 4-D inputs; 3-D silently falls back to the math path, which stores
    # [H, L, L] attention weights (quadratic memory). Strided [1, H, L, D] views are fine for them.
    q, k, v = (x.unsqueeze(0).transpose(1, 2) for x in (q_LHD, k_LHD, v_LHD))
    gqa = q.shape[1] != k.shape[1]
    length = q.shape[2]
    if sliding_window is None or length <= sliding_window:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
        return out[0].transpose(0, 1)
    # Sliding window (Mistral, some Qwen2 layers): query blocks against only the keys they can see, so the
    # mask is [block, block + window] instead of [L, L]. Same rule as transformers: kv > q - window.
    block = min(sliding_window, 2048)
    outs = []
    for q_start in range(0, length, block):
        q_end = min(q_start + block, length)
        k_start = max(0, q_start - sliding_window + 1)
        q_pos = torch.arange(q_start, q_end, device=q.device)[:, None]
        k_pos = torch.arange(k_start, q_end, device=q.device)[None, :]
        mask = (k_pos <= q_pos) & (k_pos > q_pos - sliding_window)
        out = F.scaled_dot_product_attention(
            q[:, :, q_start:q_end],
            k[:, :, k_start:q_end],
            v[:, :, k_start:q_end],
            attn_mask=mask,
            scale=scale,
            enable_gqa=gqa,
        )
        outs.append(out[0].transpose(0, 1))
    return torch.cat(outs, dim=0)


def _sdpa_per_doc(
    q_THD: torch.Tensor,
    k_THD: torch.Tensor,
    v_THD: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    # split (not slicing): its backward is one concatenation, instead of one full-size zero-filled gradient
    # per document, which would cost O(n_docs * T) with hundreds of short SFT documents.
    docs = zip(q_THD.split(lens), k_THD.split(lens), v_THD.split(lens))
    outs = [_causal_sdpa(q, k, v, scale, sliding_window) for q, k, v in docs if q.shape[0] > 0]
    return torch.cat(outs, dim=0)


def _varlen(q_THD, k_THD, v_THD, cu_seqlens, max_seqlen, scale, sliding_window) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    # window (left, 0) is causal; transformers' sliding rule kv > q - W means W - 1 keys to the left.
    left = -1 if sliding_window is None else sliding_window - 1
    return varlen_attn(
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


def _flash_attn(q_THD, k_THD, v_THD, cu_seqlens, max_seqlen, scale, sliding_window) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    left = -1 if sliding_window is None else sliding_window - 1
    # flash-attn handles GQA natively when H is a multiple of H_kv.
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
    )


def document_attention(
    q_THD: torch.Tensor,
    k_THD: torch.Tensor,
    v_THD: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float,
    backend: str = "auto",
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Causal attention inside each document of a packed sequence; returns out_THD [T, H, D].

    q_THD [T, H, D], k_THD/v_THD [T, H_kv, D] with H a multiple of H_kv; cu_seqlens int32 [n_docs + 1]
    covering exactly T tokens. This is the kernel the Ulysses wrapper calls after its all-to-all.
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
    backend = resolve_backend(backend, q_THD.device, q_THD.dtype)
    if backend == "cross_document":
        return _causal_sdpa(q_THD, k_THD, v_THD, scale, sliding_window)
    cu_seqlens = cu_seqlens.to(device=q_THD.device, dtype=torch.int32)
    covered = int(cu_seqlens[-1])
    if covered != num_tokens:
        raise ValueError(
            f"cu_seqlens covers {covered} tokens but the query has {num_tokens}; under sequence parallelism "
            "the attention must run after the all-to-all, on the full sequence"
        )
    if backend == "sdpa_per_doc":
        return _sdpa_per_doc(q_THD, k_THD, v_THD, cu_seqlens, scale, sliding_window)
    kernel = _varlen if backend == "varlen" else _flash_attn
    # The CUDA kernels want densely packed [T, heads, D]; inputs from transformers are transposed views.
    q_THD, k_THD, v_THD = (x.contiguous() for x in (q_THD, k_THD, v_THD))
    return kernel(q_THD, k_THD, v_THD, cu_seqlens, int(max_seqlen), scale, sliding_window)


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Document boundaries of one packed row from position ids that restart at 0 per document."""
    pos = position_ids.reshape(-1)
    starts = torch.nonzero(pos == 0).flatten()
    if starts.numel() == 0 or int(starts[0]) != 0:
        starts = torch.cat([torch.zeros(1, dtype=starts.dtype, device=pos.device), starts])
    end = torch.tensor([pos.numel()], dtype=starts.dtype, device=pos.device)
    return torch.cat([starts, end]).to(torch.int32)


def _dense_causal(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    """Generic path for generation/evaluation ([B, H, Tq, D], optional padding mask, KV cache).

    Queries are the last Tq of the Tk keys (bottom-right aligned causal mask), as with a KV cache.
    """
    gqa = query.shape[1] != key.shape[1]
    q_len, kv_len = query.shape[2], key.shape[2]
    if attention_mask is not None and attention_mask.dim() == 4:
        mask = attention_mask  # already prepared by the caller
    elif attention_mask is None and sliding_window is None and q_len == kv_len:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scale, enable_gqa=gqa)
        return out.transpose(1, 2)
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
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return out.transpose(1, 2)


DocumentKernel = Callable[..., torch.Tensor]
"""Signature of document_attention: (q_THD, k_THD, v_THD, cu_seqlens, max_seqlen, scale, backend,
sliding_window) -> out_THD. A sequence-parallel wrapper with this signature can be registered in its place."""


def _make_attention_function(
    backend: str, kernel: DocumentKernel
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
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        """transformers attention function: query [B, H, Tq, D], key/value [B, H_kv, Tk, D] -> [B, Tq, H, D].

        Training (one packed row, no cache, cu_seq_lens_q given or position ids restarting at 0) goes to
        the document kernel; anything else (batches with padding, KV-cache decoding) to plain causal SDPA.
        """
        if dropout:
            raise ValueError(
                "prolong attention does not implement attention dropout; set attention_dropout=0"
            )
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        batch_size, _, q_len, _ = query.shape
        kv_len = key.shape[2]
        cu_seqlens = kwargs.get("cu_seq_lens_q")
        max_seqlen = kwargs.get("max_length_q")
        packed = batch_size == 1 and q_len == kv_len
        mask_is_trivial = attention_mask is None or (attention_mask.dim() == 2 and bool(attention_mask.all()))
        if cu_seqlens is None and packed and mask_is_trivial:
            if backend == "cross_document":
                cu_seqlens = torch.tensor([0, q_len], dtype=torch.int32, device=query.device)
            elif (position_ids := kwargs.get("position_ids")) is not None and position_ids.shape[-1] == q_len:
                # No explicit boundaries: restarts of the position ids (0 starts a document) give them.
                cu_seqlens = cu_seqlens_from_position_ids(position_ids)
        if cu_seqlens is None:
            return _dense_causal(query, key, value, attention_mask, scale, sliding_window), None
        if not packed:
            raise ValueError(
                f"cu_seq_lens_q needs one packed row with no KV cache; got batch {batch_size}, "
                f"{q_len} queries, {kv_len} keys (pass use_cache=False)"
            )
        if not mask_is_trivial:
            raise ValueError("pass either cu_seq_lens_q or an attention_mask with padding, not both")
        if max_seqlen is None:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        out_THD = kernel(
            query[0].transpose(0, 1),
            key[0].transpose(0, 1),
            value[0].transpose(0, 1),
            cu_seqlens,
            int(max_seqlen),
            scale,
            backend=backend,
            sliding_window=sliding_window,
        )
        return out_THD.unsqueeze(0), None

    prolong_attention.__name__ = f"prolong_attention_{backend}"
    return prolong_attention


def attention_name(backend: str) -> str:
    """Registry name for a backend: "prolong" for auto, "prolong_<backend>" for a forced one."""
    return ATTENTION_NAME if backend == "auto" else f"{ATTENTION_NAME}_{backend}"


def register_attention(
    backend: str = "auto",
    device: torch.device | str | None = None,
    kernel: DocumentKernel | None = None,
    name: str | None = None,
) -> str:
    """Register prolong's attention with transformers and return the `attn_implementation` name to use.

    "auto" chooses the backend at each call from the device and dtype of the query, so a model loaded on
    CPU and moved to a GPU picks up the GPU kernel. A forced backend is checked now against `device`
    (default: CUDA when present, else CPU) and raises BackendUnavailableError if it cannot run there.
    kernel/name: register a replacement for document_attention (e.g. the Ulysses all-to-all wrapper) under
    another name, reusing the transformers plumbing here.
    """
    if backend != "auto":
        resolve_backend(backend, device)
    name = name or attention_name(backend)
    AttentionInterface.register(name, _make_attention_function(backend, kernel or document_attention))
    # Without a mask function transformers drops the 2D padding mask for custom attention names. The
    # flash-attention one passes padding through as [B, Tk] and returns None otherwise: it never builds a
    # [T, T] mask for packed training sequences. (Guarded by test_generation_with_cache_and_padding.)
    AttentionMaskInterface.register(name, flash_attention_mask)
    return name
