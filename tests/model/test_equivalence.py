"""Packed + document-masked == every document run alone, through real HF decoders (logits and gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_helpers import ARCHS, VOCAB, tiny_model

from prolong.model.attention import available_backends
from prolong.model.batch import attention_kwargs, make_packed_batch
from prolong.model.loss import causal_lm_loss

DOC_LENS = [7, 1, 12, 5, 9]
CPU_BACKENDS = [b for b in available_backends("cpu") if b != "causal"]


def _tokens(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def _alone(model, ids: torch.Tensor, doc_lens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated logits of each document run on its own, and the summed next-token loss."""
    logits, loss, start = [], torch.zeros(()), 0
    for n in doc_lens:
        doc_logits = model(input_ids=ids[start : start + n][None], use_cache=False).logits[0]
        logits.append(doc_logits)
        loss = loss + F.cross_entropy(doc_logits[:-1], ids[start + 1 : start + n], reduction="sum")
        start += n
    return torch.cat(logits), loss


def _grads(model) -> dict[str, torch.Tensor]:
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("arch, kv_heads", ARCHS, ids=[a for a, _ in ARCHS])
def test_packed_equals_documents_alone(arch, kv_heads, backend):
    model = tiny_model(arch, kv_heads, attn=backend)
    ids = _tokens(sum(DOC_LENS))
    batch = make_packed_batch(ids, DOC_LENS)

    packed_logits = model(input_ids=batch.input_ids, **attention_kwargs(batch)).logits[0]
    loss_sum, num_valid = causal_lm_loss(model, batch, chunk_tokens=8)
    loss_sum.backward()
    packed_grads = _grads(model)

    alone_logits, alone_loss = _alone(model, ids, DOC_LENS)
    alone_loss.backward()
    alone_grads = _grads(model)

    assert int(num_valid) == sum(n - 1 for n in DOC_LENS)
    assert (packed_logits - alone_logits).abs().max() <= 1e-5
    assert (loss_sum - alone_loss).abs() <= 1e-5 * max(1.0, alone_loss.item())
    assert packed_grads.keys() == alone_grads.keys() and len(packed_grads) > 0
    for name, grad in packed_grads.items():
        assert (grad - alone_grads[name]).abs().max() <= 1e-5, name


@pytest.mark.parametrize("arch, kv_heads", ARCHS, ids=[a for a, _ in ARCHS])
def test_position_ids_alone_isolate_documents(arch, kv_heads):
    """Without cu_seqlens (e.g. a caller that forgot them, with the default cache on) the restarts of the
    position ids still separate the documents."""
    model = tiny_model(arch, kv_heads, attn="auto")
    ids = _tokens(sum(DOC_LENS), seed=1)
    batch = make_packed_batch(ids, DOC_LENS)
    logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids).logits[0]
    alone, _ = _alone(model, ids, DOC_LENS)
    assert (logits - alone).abs().max() <= 1e-5


def test_sliding_window_model_inside_documents():
    """Mistral with a 4-token sliding window: packed documents longer than the window equal HF sdpa alone."""
    ours = tiny_model("mistral", 2, attn="auto", sliding_window=4)
    ref = tiny_model("mistral", 2, attn="sdpa", sliding_window=4)
    ids = _tokens(sum(DOC_LENS), seed=2)
    batch = make_packed_batch(ids, DOC_LENS)
    logits = ours(input_ids=batch.input_ids, **attention_kwargs(batch)).logits[0]
    alone, _ = _alone(ref, ids, DOC_LENS)
    assert (logits - alone).abs().max() <= 1e-5


@pytest.mark.parametrize("arch, kv_heads", ARCHS, ids=[a for a, _ in ARCHS])
def test_cross_document_equals_plain_causal(arch, kv_heads):
    """UltraLong mode: one causal sequence, positions 0..T-1, labels across documents == plain HF."""
    ours = tiny_model(arch, kv_heads, attn="causal")
    ref = tiny_model(arch, kv_heads, attn="sdpa")
    ids = _tokens(sum(DOC_LENS), seed=3)
    batch = make_packed_batch(ids, DOC_LENS, attention="cross_document")
    loss_sum, num_valid = causal_lm_loss(ours, batch, chunk_tokens=16)
    loss_sum.backward()
    ref_logits = ref(input_ids=ids[None], use_cache=False).logits[0]
    ref_loss = F.cross_entropy(ref_logits[:-1], ids[1:], reduction="sum")
    ref_loss.backward()
    assert int(num_valid) == len(ids) - 1
    assert (loss_sum - ref_loss).abs() <= 1e-5 * ref_loss.item()
    ref_grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        assert (p.grad - ref_grads[name].grad).abs().max() <= 1e-5, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", [b for b in ("varlen", "flash_attn") if b in available_backends()])
def test_cuda_kernels_match_per_document_sdpa(backend):
    """CUDA varlen kernels run only in bf16/fp16: compare with the fp32 per-document path on the same GPU."""
    ids = _tokens(sum(DOC_LENS), seed=4)
    batch = make_packed_batch(ids, DOC_LENS).to("cuda")
    fast = tiny_model("qwen2", 2, attn=backend).to("cuda", torch.bfloat16)
    ref = tiny_model("qwen2", 2, attn="sdpa_per_doc").to("cuda", torch.bfloat16)
    got = fast(input_ids=batch.input_ids, **attention_kwargs(batch)).logits.float()
    want = ref(input_ids=batch.input_ids, **attention_kwargs(batch)).logits.float()
    assert (got - want).abs().max() <= 5e-2
