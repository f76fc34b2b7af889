"""A stand-in for the GPU document-attention kernels, for dry runs on fake tensors.

The planner runs the real model on fake tensors (no data, no arithmetic). The real kernels cannot run
there: varlen/flash-attn need a CUDA device, and the per-document SDPA path reads document lengths and
may pick a math kernel whose memory is not the GPU's. This kernel allocates exactly what the flash
varlen kernels (torch.nn.attention.varlen, flash_attn_varlen_func) allocate and keep:

  forward   out [T, H, D] (query dtype) and the float32 log-sum-exp [H, T], both saved for backward
            with q, k, v
  backward  dq, dk, dv, plus FlashAttention-2's workspace while it runs: the float32 dq accumulator
            [T + 128, H, D rounded to 32], the float32 softmax_d [H, T + 128] and, with grouped-query
            attention, dk/dv expanded to all H heads (flash_api.cpp, mha_varlen_bwd)

It computes nothing: called on real tensors it refuses. Legend: T tokens, H query heads, H_kv
key/value heads, D head dim.
"""

from __future__ import annotations

from typing import Any

import torch

from prolong.errors import UserError
from prolong.model.attention import register_attention

PLAN_KERNEL_NAME = "plan"


def _refuse(*_: Any) -> Any:
    raise RuntimeError(
        "prolong's planning attention only runs on fake tensors (prolong plan); it computes nothing"
    )


@torch.library.custom_op("prolong_plan::flash_forward", mutates_args=())
def _flash_forward(
    q_THD: torch.Tensor, k_THD: torch.Tensor, v_THD: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return _refuse()


@_flash_forward.register_fake
def _(q_THD: torch.Tensor, k_THD: torch.Tensor, v_THD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    tokens, heads, _ = q_THD.shape
    out_THD = torch.empty_like(q_THD)
    lse_HT = torch.empty((heads, tokens), dtype=torch.float32, device=q_THD.device)
    return out_THD, lse_HT


@torch.library.custom_op("prolong_plan::flash_backward", mutates_args=())
def _flash_backward(
    dout_THD: torch.Tensor,
    q_THD: torch.Tensor,
    k_THD: torch.Tensor,
    v_THD: torch.Tensor,
    out_THD: torch.Tensor,
    lse_HT: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _refuse()


@_flash_backward.register_fake
def _(dout_THD, q_THD, k_THD, v_THD, out_THD, lse_HT) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.empty_like(q_THD), torch.empty_like(k_THD), torch.empty_like(v_THD)


def _setup_context(
    ctx: Any, inputs: tuple[torch.Tensor, ...], output: tuple[torch.Tensor, torch.Tensor]
) -> None:
    q_THD, k_THD, v_THD = inputs
    out_THD, lse_HT = output
    ctx.save_for_backward(q_THD, k_THD, v_THD, out_THD, lse_HT)


def _backward(ctx: Any, dout_THD: torch.Tensor, _dlse: torch.Tensor) -> tuple[torch.Tensor, ...]:
    q_THD, k_THD, v_THD, out_THD, lse_HT = ctx.saved_tensors
    tokens, heads, dim = q_THD.shape
    # FlashAttention-2's backward workspace, allocated here (outside the op) so memory trackers see it
    workspace = [
        torch.empty((tokens + 128, heads, -(-dim // 32) * 32), dtype=torch.float32, device=q_THD.device),
        torch.empty((heads, tokens + 128), dtype=torch.float32, device=q_THD.device),
    ]
    if k_THD.shape[1] != heads:  # grouped-query attention: dk, dv first computed for all H heads
        workspace += [torch.empty_like(q_THD), torch.empty_like(q_THD)]
    grads = _flash_backward(dout_THD.contiguous(), q_THD, k_THD, v_THD, out_THD, lse_HT)
    del workspace
    return grads


_flash_forward.register_autograd(_backward, setup_context=_setup_context)


def plan_attention_kernel(
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
    """A document kernel (prolong.model.attention.DocumentKernel) with the GPU kernels' memory.

    Sliding windows and soft-capping change no buffer of the flash kernels. Sinks are refused: on a GPU
    they run on the explicit-score path, whose memory this stand-in does not reproduce. The CUDA kernels
    take densely packed [T, heads, D] inputs: the copies `.contiguous()` makes of transformers'
    transposed views are part of their memory, so they are made here too.
    """
    if sinks is not None:
        raise UserError(
            "prolong plan: this model has attention sinks, which run on the explicit-score attention path; "
            "the planner's stand-in only reproduces the flash kernels' memory"
        )
    q_THD, k_THD, v_THD = (x.contiguous() for x in (q_THD, k_THD, v_THD))
    out_THD, _ = _flash_forward(q_THD, k_THD, v_THD)
    return out_THD


def register_plan_attention() -> str:
    """Register the stand-in with transformers through prolong's adapter; returns the implementation name."""
    return register_attention("auto", kernel=plan_attention_kernel, kernel_name=PLAN_KERNEL_NAME)
