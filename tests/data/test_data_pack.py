"""Packing properties (hypothesis): nothing lost or duplicated, boundaries at document starts,
long chunks single-document and exactly doc_len, length subsets disjoint."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from prolong.data.format import ShardReader
from prolong.data.pack import (
    assign_length_subsets,
    length_sampling_repeats,
    plan_concatenated,
    plan_long,
    plan_sft,
    shuffled_order,
    write_shard,
)


class ArrayDocs:
    """In-memory stand-in for TokenizedDocs (same read interface), for packing properties."""

    def __init__(self, docs: list[np.ndarray], masks: list[np.ndarray] | None = None) -> None:
        self.docs = docs
        self.masks = masks
        self.lengths = np.asarray([len(d) for d in docs], dtype=np.int64)

    def tokens(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self.docs[i][start:stop]

    def loss_mask(self, i: int) -> np.ndarray:
        assert self.masks is not None
        return self.masks[i]


STRIDE = 100_000  # token value = document * STRIDE + position: every token says where it came from


def make_docs(lengths: list[int]) -> ArrayDocs:
    return ArrayDocs([np.arange(n, dtype=np.uint32) + d * STRIDE for d, n in enumerate(lengths)])


lengths_st = st.lists(st.integers(1, 300), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(lengths=lengths_st, seq_len=st.integers(1, 257), seed=st.integers(0, 2**32))
def test_short_packing_loses_and_duplicates_nothing(tmp_path_factory, lengths, seq_len, seed) -> None:
    docs = make_docs(lengths)
    order = shuffled_order(np.arange(len(lengths)), None, seed)
    out = tmp_path_factory.mktemp("short") / "shard"
    write_shard(
        docs, plan_concatenated(order, docs.lengths, seq_len), out, {"seq_len": seq_len}, with_mask=False
    )
    reader = ShardReader(out)
    stream = np.concatenate([docs.docs[d] for d in order])
    full = len(stream) // seq_len
    assert len(reader) == full  # only the final partial sequence is dropped
    packed = (
        np.concatenate([reader[i].input_ids for i in range(len(reader))]) if full else np.zeros(0, np.uint32)
    )
    np.testing.assert_array_equal(packed, stream[: full * seq_len])
    for i in range(len(reader)):
        seq = reader[i]
        assert len(seq.input_ids) == seq_len
        for start, length in zip(seq.doc_starts, seq.doc_lens, strict=True):
            piece = seq.input_ids[start : start + length].astype(np.int64)
            # one boundary = one document: a piece is a contiguous run of a single document ...
            assert len(set(piece // STRIDE)) == 1 and np.all(np.diff(piece) == 1)
            # ... and it starts where that document starts, unless it is the carried-over rest at position 0
            assert piece[0] % STRIDE == 0 or start == 0


@settings(max_examples=60, deadline=None)
@given(
    lengths=lengths_st,
    doc_len=st.sampled_from([4, 8, 16, 32]),
    per_seq=st.sampled_from([1, 2, 4]),
    seed=st.integers(0, 2**32),
)
def test_long_chunks_single_document_exactly_doc_len(lengths, doc_len, per_seq, seed) -> None:
    docs = make_docs(lengths)
    seq_len = doc_len * per_seq
    order = np.arange(len(lengths))
    seen = set()
    for pieces in plan_long(order, docs.lengths, seq_len, doc_len, seed):
        assert len(pieces) == per_seq
        assert (
            len({d for d, _, _ in pieces}) == per_seq
        )  # chunks of one sequence come from distinct documents
        for d, start, stop in pieces:
            assert stop - start == doc_len and start % doc_len == 0 and stop <= lengths[d]
            assert (d, start) not in seen  # no chunk used twice
            seen.add((d, start))
    if per_seq == 1:  # every whole chunk of every long-enough document is used
        assert len(seen) == sum(n // doc_len for n in lengths)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 5000), min_size=1, max_size=200),
    weights=st.lists(st.floats(0.05, 1.0), min_size=2, max_size=3),
    seed=st.integers(0, 2**32),
)
def test_length_subsets_disjoint_and_eligible(lengths, weights, seed) -> None:
    doc_lens = [64, 256, 1024][: len(weights)]
    lengths_arr = np.asarray(lengths)
    subset = assign_length_subsets(lengths_arr, doc_lens, weights, seed)
    assert subset.shape == lengths_arr.shape  # one subset index per document: disjoint by construction
    for i, j in enumerate(subset):
        if j < 0:
            assert lengths[i] < min(doc_lens)  # only documents too short for every subset are unused
        else:
            assert lengths[i] >= doc_lens[j]
    plans = [
        {d for p in plan_long(np.nonzero(subset == j)[0], lengths_arr, n, n, seed) for d, _, _ in p}
        for j, n in enumerate(doc_lens)
    ]
    for a in range(len(plans)):
        for b in range(a + 1, len(plans)):
            assert not plans[a] & plans[b]


def test_length_subsets_follow_token_proportions() -> None:
    lengths = np.random.default_rng(0).integers(1024, 20000, 4000)
    subset = assign_length_subsets(lengths, [1024, 8192], [0.5, 0.5], seed=1)
    usable = [((lengths // n) * n)[subset == j].sum() for j, n in enumerate([1024, 8192])]
    assert abs(usable[0] / sum(usable) - 0.5) < 0.01


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 120), min_size=1, max_size=30),
    seq_len=st.integers(16, 128),
    seed=st.integers(0, 2**32),
)
def test_sft_packing_keeps_conversations_whole(lengths, seq_len, seed) -> None:
    order = shuffled_order(np.arange(len(lengths)), None, seed)
    used = []
    for pieces in plan_sft(order, np.asarray(lengths), seq_len):
        assert sum(stop - start for _, start, stop in pieces) <= seq_len
        for d, start, stop in pieces:
            assert (start, stop) == (0, lengths[d])  # never cut
            used.append(d)
    assert sorted(used) == sorted(d for d in range(len(lengths)) if lengths[d] <= seq_len)


def test_length_sampling_upsamples_long_documents() -> None:
    lengths = np.asarray([100] * 1000 + [10_000] * 1000)
    repeats = length_sampling_repeats(lengths, threshold=1000, long_factor=2.5, short_factor=0.25, seed=3)
    assert abs(repeats[:1000].mean() - 0.25) < 0.05 and abs(repeats[1000:].mean() - 2.5) < 0.1
    order = shuffled_order(np.arange(2000), repeats, seed=3)
    assert len(order) == repeats.sum()
