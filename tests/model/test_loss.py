"""Chunked cross-entropy == full-logits cross-entropy (values and gradients), without [T, V] logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_helpers import VOCAB, tiny_model

from prolong.model.batch import IGNORE_INDEX, make_packed_batch
from prolong.model.loss import CausalLMWithChunkedLoss, causal_lm_loss, chunked_cross_entropy


def _inputs(tokens=37, dim=16, vocab=50, ignore_every=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, dim, generator=g, dtype=torch.float64).float().requires_grad_()
    weight = (0.2 * torch.randn(vocab, dim, generator=g)).requires_grad_()  # LM-head-like scale
    labels = torch.randint(0, vocab, (tokens,), generator=g)
    labels[::ignore_every] = IGNORE_INDEX
    return hidden, weight, labels


@pytest.mark.parametrize("chunk_tokens", [1, 5, 16, 37, 4096])
def test_chunked_equals_full_loss_and_grads(chunk_tokens):
    hidden, weight, labels = _inputs()
    loss_sum, num_valid = chunked_cross_entropy(hidden, weight, labels, chunk_tokens=chunk_tokens)
    grads = torch.autograd.grad(loss_sum, (hidden, weight))
    full = F.cross_entropy(hidden @ weight.t(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    full_grads = torch.autograd.grad(full, (hidden, weight))
    assert loss_sum.dtype == torch.float32
    assert int(num_valid) == int((labels != IGNORE_INDEX).sum())
    assert abs(loss_sum.item() - full.item()) <= 1e-6 * max(1.0, abs(full.item()))
    for got, want in zip(grads, full_grads, strict=True):
        assert (got - want).abs().max() <= 1e-6


def test_mean_is_sum_over_count_and_all_ignored_is_zero():
    hidden, weight, labels = _inputs()
    loss_sum, num_valid = chunked_cross_entropy(hidden, weight, labels, chunk_tokens=8)
    mean = F.cross_entropy(hidden @ weight.t(), labels, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(loss_sum / num_valid, mean)
    empty_sum, empty_count = chunked_cross_entropy(hidden, weight, torch.full_like(labels, IGNORE_INDEX))
    assert empty_sum.item() == 0.0 and int(empty_count) == 0
    empty_sum.backward()  # still differentiable (zero gradient), so every rank can join the backward


def test_softcap_matches_full():
    hidden, weight, labels = _inputs()
    loss_sum, _ = chunked_cross_entropy(hidden, weight, labels, chunk_tokens=7, softcap=3.0)
    logits = torch.tanh((hidden @ weight.t()) / 3.0) * 3.0
    full = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    assert abs(loss_sum.item() - full.item()) <= 1e-5


def test_no_full_logits_are_kept_for_backward():
    """Autograd keeps no logits ([*, V] tensors) between forward and backward: each chunk's logits are
    recomputed in backward, so memory holds one [chunk, V] block at a time instead of [T, V]."""
    hidden, weight, labels = _inputs(tokens=64, vocab=50)
    saved_shapes = []

    def pack(t):
        saved_shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_sum, _ = chunked_cross_entropy(hidden, weight, labels, chunk_tokens=16)
    loss_sum.backward()
    assert saved_shapes and not any(len(s) == 2 and s[-1] == 50 for s in saved_shapes), saved_shapes


def test_shape_errors():
    hidden, weight, labels = _inputs()
    with pytest.raises(ValueError, match="expected hidden"):
        chunked_cross_entropy(hidden[None], weight, labels)
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunked_cross_entropy(hidden, weight, labels, chunk_tokens=0)


def test_causal_lm_loss_equals_transformers_loss_and_wrapper():
    """On one document, our (sum, count) equals the HF model's own mean loss times the count."""
    model = tiny_model("llama", 4, attn="auto")
    ids = torch.randint(0, VOCAB, (20,), generator=torch.Generator().manual_seed(0))
    batch = make_packed_batch(ids, [20])
    loss_sum, num_valid = causal_lm_loss(model, batch, chunk_tokens=6)
    hf_loss = model(input_ids=ids[None], labels=ids[None], use_cache=False).loss
    assert int(num_valid) == 19
    assert abs(loss_sum.item() / 19 - hf_loss.item()) <= 1e-6

    wrapper = CausalLMWithChunkedLoss(model, chunk_tokens=6)
    wrapped_sum, wrapped_count = wrapper(batch)
    assert wrapped_sum.item() == pytest.approx(loss_sum.item(), abs=1e-6) and int(wrapped_count) == 19
    assert set(dict(wrapper.named_parameters())) == {f"model.{n}" for n, _ in model.named_parameters()}


def test_first_token_of_a_document_is_not_predicted_from_the_previous_one():
    """Changing the first token of document 2 must not change document 1's loss: it is never a target."""
    model = tiny_model("qwen2", 2, attn="auto")
    ids = torch.randint(0, VOCAB, (12,), generator=torch.Generator().manual_seed(0))
    other = ids.clone()
    other[5] = (ids[5] + 1) % VOCAB
    # Only document 2 changes, but its first token's own prediction of token 6 is in doc 2's loss.
    def doc2_alone(x: torch.Tensor) -> torch.Tensor:
        return causal_lm_loss(model, make_packed_batch(x[5:], [7]))[0]

    a = causal_lm_loss(model, make_packed_batch(ids, [5, 7]))[0] - doc2_alone(ids)
    b = causal_lm_loss(model, make_packed_batch(other, [5, 7]))[0] - doc2_alone(other)
    assert abs(a.item() - b.item()) <= 1e-5
