"""Packed micro-batches: one sequence of several documents, with the boundaries attention needs.

Legend: T = tokens in the packed sequence. Labels are shifted here, once, so that sequence parallelism can
split every [1, T] tensor along T without losing the target of the last token of a slice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

IGNORE_INDEX = -100
AttentionMode = Literal["document", "cross_document"]
ATTENTION_MODES: tuple[str, ...] = ("document", "cross_document")


@dataclass
class PackedBatch:
    """One packed sequence ready for the model.

    input_ids, position_ids, labels: LongTensor [1, T]. labels are already shifted (labels[t] is the target
    predicted at position t) and IGNORE_INDEX (-100) where nothing is predicted.
    cu_seqlens: int32 [n_attention_segments + 1], the boundaries attention must respect; in "document" mode
    one segment per document, in "cross_document" mode a single segment [0, T].
    max_seqlen: the longest segment. doc_lens: the true document lengths (both modes), for statistics.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    attention: AttentionMode = "document"
    doc_lens: list[int] = field(default_factory=list)

    @property
    def seq_len(self) -> int:
        """Number of tokens T in the packed sequence."""
        return int(self.input_ids.shape[-1])

    @property
    def num_valid_tokens(self) -> int:
        """Number of positions whose label is predicted (the loss denominator of this micro-batch)."""
        return int((self.labels != IGNORE_INDEX).sum().item())

    @property
    def attention_cost(self) -> int:
        """Sum of squared segment lengths: proportional to the attention FLOPs of this batch."""
        lens = (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).tolist()
        return int(sum(n * n for n in lens))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        """Copy of the batch with every tensor on `device` (cu_seqlens stays int32)."""
        return replace(
            self,
            input_ids=self.input_ids.to(device, non_blocking=non_blocking),
            position_ids=self.position_ids.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            cu_seqlens=self.cu_seqlens.to(device, non_blocking=non_blocking),
        )


def _as_long_1d(values: Any, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(tensor.shape)}")
    return tensor.to(torch.long)


def make_packed_batch(
    input_ids: Any,
    doc_lens: Any,
    loss_mask: Any | None = None,
    attention: AttentionMode = "document",
) -> PackedBatch:
    """Build a PackedBatch from a flat token array and its document lengths.

    input_ids: 1-D numpy array or tensor of T token ids. doc_lens: lengths of the documents in order, summing
    to T. loss_mask: optional 1-D booleans, True where a token should be predicted (e.g. assistant tokens in
    SFT). attention: "document" (ProLong: no attention or prediction across documents, positions restart
    at 0 per document) or "cross_document" (UltraLong: one causal sequence, positions 0..T-1).
    """
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    ids = _as_long_1d(input_ids, "input_ids")
    lens = [int(n) for n in _as_long_1d(doc_lens, "doc_lens").tolist()]
    seq_len = ids.numel()
    if seq_len == 0:
        raise ValueError("input_ids is empty")
    if any(n <= 0 for n in lens):
        raise ValueError(f"doc_lens must all be positive, got {lens}")
    if sum(lens) != seq_len:
        raise ValueError(f"doc_lens sum to {sum(lens)} but input_ids has {seq_len} tokens")
    if loss_mask is None:
        mask = torch.ones(seq_len, dtype=torch.bool)
    else:
        mask = _as_long_1d(loss_mask, "loss_mask").to(torch.bool)
        if mask.numel() != seq_len:
            raise ValueError(f"loss_mask has {mask.numel()} entries but input_ids has {seq_len}")

    doc_cu = torch.zeros(len(lens) + 1, dtype=torch.long)
    doc_cu[1:] = torch.tensor(lens, dtype=torch.long).cumsum(0)

    labels = torch.full((seq_len,), IGNORE_INDEX, dtype=torch.long)
    labels[:-1] = torch.where(mask[1:], ids[1:], IGNORE_INDEX)
    if attention == "document":
        # The last token of each document would predict the next document's first token: not a target.
        labels[doc_cu[1:] - 1] = IGNORE_INDEX
        starts = torch.repeat_interleave(doc_cu[:-1], torch.tensor(lens))
        position_ids = torch.arange(seq_len) - starts
        cu_seqlens = doc_cu.to(torch.int32)
        max_seqlen = max(lens)
    else:
        position_ids = torch.arange(seq_len)
        cu_seqlens = torch.tensor([0, seq_len], dtype=torch.int32)
        max_seqlen = seq_len

    return PackedBatch(
        input_ids=ids.unsqueeze(0),
        position_ids=position_ids.unsqueeze(0),
        labels=labels.unsqueeze(0),
        cu_seqlens=cu_seqlens,
        max_seqlen=int(max_seqlen),
        attention=attention,
        doc_lens=lens,
    )


def concat_batches(batches: list[PackedBatch]) -> PackedBatch:
    """One row holding `batches` back to back, each keeping its own attention segments, positions and labels.

    Attention never crosses from one batch into the next and no label points across, so the loss sum and
    its gradients are those of the batches run one by one (summed in another order): several short
    sequences can share one forward/backward, whose larger matrix products run faster on a CPU.
    """
    if not batches:
        raise ValueError("no batches to concatenate")
    if len(batches) == 1:
        return batches[0]
    if any(b.attention != "document" for b in batches):
        raise ValueError("only document-mode batches can share a row (cross_document rows are one segment)")
    offsets = np.cumsum([0] + [b.seq_len for b in batches[:-1]]).tolist()
    cu_seqlens = torch.cat(
        [batches[0].cu_seqlens[:1]] + [b.cu_seqlens[1:] + offset for b, offset in zip(batches, offsets, strict=True)]
    ).to(torch.int32)
    return PackedBatch(
        input_ids=torch.cat([b.input_ids for b in batches], dim=1),
        position_ids=torch.cat([b.position_ids for b in batches], dim=1),
        labels=torch.cat([b.labels for b in batches], dim=1),
        cu_seqlens=cu_seqlens,
        max_seqlen=max(b.max_seqlen for b in batches),
        attention="document",
        doc_lens=[n for b in batches for n in b.doc_lens],
    )


def attention_kwargs(batch: PackedBatch) -> dict[str, Any]:
    """Keyword arguments for an HF decoder forward so the registered attention sees document boundaries.

    No attention_mask and use_cache=False on purpose: with either, transformers' own sdpa/eager paths stop
    detecting packed sequences and let documents attend to each other (see tests/model/test_sdpa_trap.py).
    """
    return {
        "position_ids": batch.position_ids,
        "cu_seq_lens_q": batch.cu_seqlens,
        "cu_seq_lens_k": batch.cu_seqlens,
        "max_length_q": batch.max_seqlen,
        "max_length_k": batch.max_seqlen,
        "use_cache": False,
    }
