"""Packing: documents of a tokenized corpus -> sequences of the stage length.

Planning works on document lengths only and yields, per sequence, its pieces (document, start, stop);
`write_shard` then copies those token ranges into a shard. Rules (specs/recipe.md, Data processing):

- long: documents shorter than doc_len are dropped; longer ones are cut into single-document chunks of
  exactly doc_len (the remainder is dropped); when doc_len < seq_len, seq_len // doc_len chunks of
  distinct documents fill one sequence.
- short (and any domain in cross_document mode): shuffled documents concatenated; the last document of
  a sequence is truncated and its rest starts the next sequence; the final partial sequence is dropped.
- sft: shuffled conversations packed whole; one that does not fit the current sequence starts the next
  (the rest of the current one stays empty: sequences may be shorter than seq_len); one longer than
  seq_len is dropped.
- length curriculum: `assign_length_subsets` gives each document of a domain exactly one length subset.
- UltraLong length sampling: `length_sampling_repeats` up-samples long and down-samples short documents.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from prolong.data.format import TOKEN_DTYPE, ShardWriter
from prolong.data.sources import stable_seed

Piece = tuple[int, int, int]  # (document index, start token, stop token)


# ------------------------------------------------------------------------------ document selection
def assign_length_subsets(
    lengths: np.ndarray, doc_lens: Sequence[int], weights: Sequence[float], seed: int
) -> np.ndarray:
    """Subset index per document (-1: shorter than every doc_len), each document in exactly one subset.

    Documents are visited in a seeded order and each goes to the eligible subset (doc_len <= its length)
    furthest below its token target, counting the tokens it would contribute as whole chunks; so the
    subsets' token shares follow `weights` as closely as the documents allow.
    """
    weights_arr = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    subset_lens = np.asarray(doc_lens, dtype=np.int64)
    assigned = np.zeros(len(subset_lens), dtype=np.float64)
    result = np.full(len(lengths), -1, dtype=np.int64)
    order = np.random.default_rng(stable_seed(seed, "length-subsets")).permutation(len(lengths))
    for i in order:
        length = int(lengths[i])
        eligible = subset_lens <= length
        if not eligible.any():
            continue
        usable = (length // subset_lens) * subset_lens
        deficit = weights_arr * (assigned.sum() + usable) - assigned
        deficit[~eligible] = -np.inf
        j = int(np.argmax(deficit))
        result[i] = j
        assigned[j] += usable[j]
    return result


def length_sampling_repeats(
    lengths: np.ndarray, threshold: int, long_factor: float, short_factor: float, seed: int
) -> np.ndarray:
    """How many times each document is used: factor floor + a seeded coin for the fraction."""
    factors = np.where(lengths >= threshold, long_factor, short_factor)
    coins = np.random.default_rng(stable_seed(seed, "length-sampling")).random(len(lengths))
    return (np.floor(factors) + (coins < factors - np.floor(factors))).astype(np.int64)


def shuffled_order(documents: np.ndarray, repeats: np.ndarray | None, seed: int) -> np.ndarray:
    """Document indices (each repeated as sampled) in a seeded random order."""
    order = np.repeat(documents, repeats[documents]) if repeats is not None else np.asarray(documents)
    return np.random.default_rng(stable_seed(seed, "order")).permutation(order)


# ------------------------------------------------------------------------------ plans
def plan_long(
    order: Sequence[int] | np.ndarray, lengths: np.ndarray, seq_len: int, doc_len: int, seed: int
) -> Iterator[list[Piece]]:
    """Single-document chunks of exactly doc_len; seq_len // doc_len chunks of distinct documents each."""
    if seq_len % doc_len:
        raise ValueError(f"doc_len={doc_len} must divide seq_len={seq_len}")
    per_seq = seq_len // doc_len
    chunks = [
        (int(d), k * doc_len, (k + 1) * doc_len) for d in order for k in range(int(lengths[d]) // doc_len)
    ]
    if per_seq == 1:
        for chunk in chunks:
            yield [chunk]
        return
    random.Random(stable_seed(seed, "chunks")).shuffle(chunks)
    pending: deque[Piece] = deque()
    current: list[Piece] = []
    for chunk in chunks:
        pending.append(chunk)
        placed = True
        while placed and pending:  # place any waiting chunk whose document is not yet in the sequence
            placed = False
            in_current = {piece[0] for piece in current}
            for index, candidate in enumerate(pending):
                if candidate[0] not in in_current:
                    del pending[index]
                    current.append(candidate)
                    placed = True
                    break
            if len(current) == per_seq:
                yield current
                current = []


def plan_concatenated(order: Sequence[int] | np.ndarray, lengths: np.ndarray, seq_len: int) -> Iterator[list[Piece]]:
    """Documents back to back; the rest of a truncated document starts the next sequence."""
    current: list[Piece] = []
    filled = 0
    for d in order:
        start, length = 0, int(lengths[d])
        while start < length:
            take = min(length - start, seq_len - filled)
            current.append((int(d), start, start + take))
            start += take
            filled += take
            if filled == seq_len:
                yield current
                current, filled = [], 0


def plan_sft(order: Sequence[int] | np.ndarray, lengths: np.ndarray, seq_len: int) -> Iterator[list[Piece]]:
    """Whole conversations; one that does not fit starts the next sequence, one longer than seq_len is dropped."""
    current: list[Piece] = []
    filled = 0
    for d in order:
        length = int(lengths[d])
        if length > seq_len or length == 0:
            continue
        if filled + length > seq_len:
            yield current
            current, filled = [], 0
        current.append((int(d), 0, length))
        filled += length
    if current:
        yield current


# ------------------------------------------------------------------------------ writing
def write_shard(
    docs: Any, plan: Iterator[list[Piece]], out: Any, meta: dict[str, Any], with_mask: bool
) -> dict[str, Any]:
    """Copy each planned sequence's token ranges (and mask) from `docs` into a new shard at `out`."""
    writer = ShardWriter(out, with_loss_mask=with_mask)
    try:
        for pieces in plan:
            total = sum(stop - start for _, start, stop in pieces)
            ids = np.empty(total, dtype=TOKEN_DTYPE)
            mask = np.empty(total, dtype=bool) if with_mask else None
            at = 0
            for d, start, stop in pieces:
                ids[at : at + stop - start] = docs.tokens(d, start, stop)
                if mask is not None:
                    mask[at : at + stop - start] = docs.loss_mask(d)[start:stop]
                at += stop - start
            writer.add(ids, np.asarray([stop - start for _, start, stop in pieces], dtype=np.int32), mask)
    except BaseException:
        writer.abort()
        raise
    return writer.close(meta)
