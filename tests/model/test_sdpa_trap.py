"""Regression guard: transformers' own sdpa lets packed documents attend to each other as soon as a cache
object or an attention mask is present. Ours must isolate documents in exactly those situations."""

from __future__ import annotations

import pytest
import torch
from model_helpers import VOCAB, tiny_model

from prolong.model.batch import attention_kwargs, make_packed_batch

DOC_LENS = [6, 10, 4]


def _alone(model, ids):
    out, start = [], 0
    for n in DOC_LENS:
        out.append(model(input_ids=ids[start : start + n][None], use_cache=False).logits[0])
        start += n
    return torch.cat(out)


TRAPS = {
    # use_cache (True by default in every config) creates a DynamicCache, which disables packed detection.
    "kv_cache": {"use_cache": True},
    "all_ones_mask": {"use_cache": False, "attention_mask": "ones"},
}


@pytest.mark.parametrize("trap", list(TRAPS))
def test_plain_sdpa_leaks_and_prolong_does_not(trap):
    ids = torch.randint(0, VOCAB, (sum(DOC_LENS),), generator=torch.Generator().manual_seed(0))
    batch = make_packed_batch(ids, DOC_LENS)
    kwargs = dict(TRAPS[trap])
    if kwargs.get("attention_mask") == "ones":
        kwargs["attention_mask"] = torch.ones_like(batch.input_ids)

    plain = tiny_model("qwen2", 2, attn="sdpa")
    alone = _alone(plain, ids)
    leaked = plain(input_ids=batch.input_ids, position_ids=batch.position_ids, **kwargs).logits[0]
    # The trap is real: later documents see earlier ones (first document unaffected).
    assert (leaked - alone)[DOC_LENS[0] :].abs().max() > 1e-2

    ours = tiny_model("qwen2", 2, attn="auto")
    packed_kwargs = {**attention_kwargs(batch), **kwargs}  # same cache / mask situation, plus boundaries
    isolated = ours(input_ids=batch.input_ids, **packed_kwargs).logits[0]
    assert (isolated - alone).abs().max() <= 1e-5
