"""Ulysses sequence parallelism: a transform of the batch plus an attention wrapper.

Each of the `sp` ranks of a group holds T/sp consecutive tokens of one packed sequence (labels shifted
before the split, position ids the global per-document positions sliced). Inside attention an
all-to-all turns q [T/sp, H, D] into [T, H/sp, D] (k/v the same with their own KV-head count), document
attention runs on the whole sequence with the global `cu_seqlens`, and a second all-to-all returns
[T/sp, H, D]. Everything outside attention is per token, so the rest of the model needs no change.

When every document lies inside one rank's slice (e.g. 64K documents in a 512K sequence over 8 ranks),
attention needs no other rank's tokens: the batch carries the local boundaries and the wrapper skips
both exchanges.

Shapes: T tokens, H query heads, K key/value heads, D head dim; `_THD` = [T, H, D].
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import torch
import torch.distributed as dist

from prolong.model.attention import DocumentKernel, document_attention, register_attention
from prolong.model.batch import PackedBatch


class _AllToAll(torch.autograd.Function):
    """Equal-split all-to-all along dim 0; its gradient is the same exchange of the gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        x = x.contiguous()
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        dist.all_to_all_single(out, grad, group=ctx.group)
        return out, None


def seq_to_heads(x_THD: torch.Tensor, group: dist.ProcessGroup, sp: int) -> torch.Tensor:
    """[T/sp, H, D] on each rank -> [T, H/sp, D]: gather the sequence, scatter the heads."""
    t_local, heads, dim = x_THD.shape
    # chunk j of dim 0 goes to rank j: our tokens of head group j
    chunks = x_THD.reshape(t_local, sp, heads // sp, dim).transpose(0, 1)
    received = _AllToAll.apply(chunks, group)  # chunk j: rank j's tokens of our head group
    return received.reshape(sp * t_local, heads // sp, dim)


def heads_to_seq(x_THD: torch.Tensor, group: dist.ProcessGroup, sp: int) -> torch.Tensor:
    """[T, H/sp, D] -> [T/sp, H, D]: the inverse of `seq_to_heads`."""
    tokens, heads_local, dim = x_THD.shape
    chunks = x_THD.reshape(sp, tokens // sp, heads_local, dim)  # chunk j: rank j's tokens
    received = _AllToAll.apply(chunks, group)  # chunk j: our tokens of head group j
    return received.transpose(0, 1).reshape(tokens // sp, sp * heads_local, dim)


def kv_repeats(num_key_value_heads: int, sp: int) -> int:
    """How often to repeat KV heads so that each rank gets whole ones (1 when they divide by sp).

    Repeating to lcm(K, sp) heads keeps the grouped-query mapping: query head h still reads the copy of
    KV head h // (H / K). lcm(K, sp) divides H because both K and sp do.
    """
    return math.lcm(num_key_value_heads, sp) // num_key_value_heads


def ulysses_attention(
    q_THD: torch.Tensor,
    k_TKD: torch.Tensor,
    v_TKD: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float,
    backend: str = "auto",
    sliding_window: int | None = None,
    *,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    group: dist.ProcessGroup,
    inner: DocumentKernel = document_attention,
) -> torch.Tensor:
    """Document attention over a sequence split across `group`: q [T/sp, H, D] -> the local [T/sp, H, D].

    A document kernel (the signature of document_attention, with the group bound) for the one adapter of
    prolong.model.attention. The boundaries tell which case a batch is: global (covering sp * T/sp
    tokens: exchange, attend on the whole sequence) or local (every document inside this rank's slice:
    attend locally, no exchange). The causal kernel ignores boundaries, so it always exchanges.
    `inner` is the kernel attention runs with (prolong plan passes its stand-in for the GPU kernels).
    """
    sp = dist.get_world_size(group)
    if sp == 1 or (backend != "causal" and int(cu_seqlens[-1]) != sp * q_THD.shape[0]):
        return inner(
            q_THD,
            k_TKD,
            v_TKD,
            cu_seqlens,
            max_seqlen,
            scale,
            backend,
            sliding_window,
            softcap=softcap,
            sinks=sinks,
        )
    repeats = kv_repeats(k_TKD.shape[1], sp)
    if repeats > 1:  # only as many copies as needed for whole heads per rank, never the full H
        k_TKD = k_TKD.repeat_interleave(repeats, dim=1)
        v_TKD = v_TKD.repeat_interleave(repeats, dim=1)
    q = seq_to_heads(q_THD, group, sp)
    k = seq_to_heads(k_TKD, group, sp)
    v = seq_to_heads(v_TKD, group, sp)
    if sinks is not None:  # after the exchange this rank holds query heads [rank * H/sp, (rank + 1) * H/sp)
        sinks = sinks.chunk(sp)[dist.get_rank(group)]
    out = inner(q, k, v, cu_seqlens, max_seqlen, scale, backend, sliding_window, softcap=softcap, sinks=sinks)
    return heads_to_seq(out, group, sp)


def ulysses_kernel_name(group: dist.ProcessGroup) -> str:
    """Registry token for the exchange over `group`: its size and c10d's name for it, which is unique
    among the live groups of a process, so two meshes or stages never share one registered closure."""
    label = "".join(ch if ch.isalnum() else "-" for ch in str(group.group_name))
    return f"ulysses{dist.get_world_size(group)}-pg{label}"


def register_ulysses_attention(
    group: dist.ProcessGroup, backend: str, inner: DocumentKernel = document_attention
) -> str:
    """Register the Ulysses exchange as the document kernel of prolong's attention adapter; returns the
    implementation name (it names the group, see `ulysses_kernel_name`).

    The HF attention modules call it with q [1, H, T/sp, D], k/v [1, K, T/sp, D] and the batch's
    keyword arguments (`cu_seq_lens_q`, `max_length_q` from `sp_shard_batch`); a call without those
    boundaries is refused (require_boundaries), never split by local position ids. `inner`: the
    kernel after the exchange (its name joins the registry name).
    """
    inner_name = "" if inner is document_attention else f"-{getattr(inner, '__name__', type(inner).__name__)}"
    return register_attention(
        backend,
        kernel=functools.partial(ulysses_attention, group=group, inner=inner),
        kernel_name=ulysses_kernel_name(group) + inner_name,
        require_boundaries=True,
    )


def _slice_boundaries(cu_seqlens: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Document boundaries of tokens [start, stop), relative to start."""
    inside = cu_seqlens[(cu_seqlens > start) & (cu_seqlens < stop)]
    edges = torch.tensor([start, stop], dtype=cu_seqlens.dtype, device=cu_seqlens.device)
    return torch.cat([edges[:1], inside, edges[1:]]) - start


def documents_fit_slices(cu_seqlens: torch.Tensor, sp: int) -> bool:
    """True when every slice boundary k*T/sp is a document boundary (no document spans two ranks)."""
    total = int(cu_seqlens[-1])
    bounds = set(cu_seqlens.tolist())
    return total % sp == 0 and all(k * total // sp in bounds for k in range(1, sp))


def sp_shard_batch(batch: PackedBatch, sp_rank: int, sp: int) -> PackedBatch:
    """This rank's T/sp tokens of a packed batch (labels were shifted before, positions stay global).

    The boundaries stay global so attention can run on the gathered sequence, unless every document
    lies inside one slice: then they are this slice's own and the attention wrapper skips the exchange.
    """
    if sp == 1:
        return batch
    tokens = batch.input_ids.shape[1]
    if tokens % sp:
        raise ValueError(f"a sequence of {tokens} tokens cannot be split over {sp} ranks; pad it first")
    size = tokens // sp
    start, stop = sp_rank * size, (sp_rank + 1) * size
    cu_seqlens, max_seqlen = batch.cu_seqlens, batch.max_seqlen
    if documents_fit_slices(batch.cu_seqlens, sp):
        cu_seqlens = _slice_boundaries(batch.cu_seqlens, start, stop)
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    return dataclasses.replace(
        batch,
        input_ids=batch.input_ids[:, start:stop],
        position_ids=batch.position_ids[:, start:stop],
        labels=batch.labels[:, start:stop],
        cu_seqlens=cu_seqlens,
        max_seqlen=max_seqlen,
    )
