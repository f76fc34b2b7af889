"""PackedBatch construction: shifted labels, per-document positions, boundaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prolong.model.batch import IGNORE_INDEX, attention_kwargs, make_packed_batch

IGN = IGNORE_INDEX


def test_document_mode_labels_positions_and_boundaries():
    batch = make_packed_batch(np.array([10, 11, 12, 20, 21, 30], dtype=np.uint32), np.array([3, 2, 1]))
    assert batch.input_ids.tolist() == [[10, 11, 12, 20, 21, 30]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 0]]
    # The last token of every document predicts nothing: the next document's first token is never a target.
    assert batch.labels.tolist() == [[11, 12, IGN, 21, IGN, IGN]]
    assert batch.cu_seqlens.dtype == torch.int32
    assert batch.cu_seqlens.tolist() == [0, 3, 5, 6]
    assert batch.max_seqlen == 3
    assert batch.num_valid_tokens == 3
    assert batch.attention_cost == 9 + 4 + 1
    assert batch.input_ids.dtype == batch.position_ids.dtype == batch.labels.dtype == torch.long


def test_loss_mask_applies_to_the_predicted_token():
    ids = torch.tensor([1, 2, 3, 4, 5, 6])
    mask = torch.tensor([0, 0, 1, 1, 0, 1], dtype=torch.bool)
    batch = make_packed_batch(ids, [4, 2], loss_mask=mask)
    # labels[t] = ids[t+1] only where mask[t+1] (SFT: assistant tokens are the targets).
    assert batch.labels.tolist() == [[IGN, 3, 4, IGN, 6, IGN]]
    assert batch.num_valid_tokens == 3


def test_cross_document_mode_predicts_across_boundaries():
    batch = make_packed_batch([1, 2, 3, 4, 5], [2, 3], attention="cross_document")
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4]]
    assert batch.labels.tolist() == [[2, 3, 4, 5, IGN]]
    assert batch.cu_seqlens.tolist() == [0, 5]
    assert batch.max_seqlen == 5
    assert batch.doc_lens == [2, 3]


def test_attention_kwargs_have_boundaries_and_no_cache_or_mask():
    batch = make_packed_batch([1, 2, 3, 4], [1, 3])
    kwargs = attention_kwargs(batch)
    assert kwargs["use_cache"] is False and "attention_mask" not in kwargs
    assert kwargs["cu_seq_lens_q"] is kwargs["cu_seq_lens_k"] is batch.cu_seqlens
    assert kwargs["max_length_q"] == kwargs["max_length_k"] == 3
    assert kwargs["position_ids"].tolist() == [[0, 0, 1, 2]]


def test_to_moves_tensors_and_keeps_metadata():
    batch = make_packed_batch([1, 2, 3], [3]).to("cpu")
    assert batch.cu_seqlens.dtype == torch.int32 and batch.max_seqlen == 3 and batch.seq_len == 3


@pytest.mark.parametrize(
    "ids, lens, kwargs, message",
    [
        ([1, 2, 3], [2, 2], {}, "sum to 4"),
        ([1, 2, 3], [3, 0], {}, "positive"),
        ([1, 2, 3], [3], {"loss_mask": [1, 1]}, "loss_mask"),
        ([1, 2, 3], [3], {"attention": "nope"}, "attention must be"),
        ([[1, 2, 3]], [3], {}, "1-D"),
    ],
)
def test_invalid_inputs_are_explained(ids, lens, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_packed_batch(ids, lens, **kwargs)
