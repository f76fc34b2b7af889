"""Faster CPU steps that compute the same thing: micro-batches of several packed sequences
(training.microbatch_tokens), the one-chunk loss without recomputation, and the CPU compute dtype
(training.cpu_compute_dtype: bf16 autocast only where the CPU multiplies bf16 natively)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM

from prolong.data.format import PackedSequence
from prolong.model import loss as loss_module
from prolong.model.attention import register_attention
from prolong.model.batch import concat_batches, make_packed_batch
from prolong.model.loss import CausalLMWithChunkedLoss, chunked_cross_entropy, resolve_cpu_compute_dtype
from prolong.parallel.mesh import ParallelMesh
from prolong.parallel.parallelize import parallelize
from prolong.train.loop import accumulate_gradients, group_microbatches, sequence_to_batch

VOCAB = 64


def _sequences(doc_lens: list[list[int]], sft: bool = False) -> list[PackedSequence]:
    rng = np.random.default_rng(0)
    out = []
    for lens in doc_lens:
        n = sum(lens)
        mask = rng.random(n) < 0.3 if sft else None
        out.append(PackedSequence(rng.integers(0, VOCAB, n).astype(np.uint32), np.asarray(lens, np.int32), mask))
    return out


def _model() -> CausalLMWithChunkedLoss:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(config).float()
    model.set_attn_implementation(register_attention("sdpa_per_doc"))
    return CausalLMWithChunkedLoss(model, chunk_tokens=40)


@pytest.mark.parametrize("sft", [False, True])
def test_joined_batch_is_the_batch_of_the_joined_sequence(sft: bool) -> None:
    """Joining batches gives exactly the batch make_packed_batch builds from the sequences laid end to
    end: same tokens, positions restarting per document, labels never pointing across, boundaries."""
    seqs = _sequences([[20, 12], [32], [5, 9, 18]], sft)
    joined = concat_batches([sequence_to_batch(s, "document", 1) for s in seqs])
    whole = sequence_to_batch(
        PackedSequence(
            np.concatenate([s.input_ids for s in seqs]),
            np.concatenate([s.doc_lens for s in seqs]),
            np.concatenate([s.loss_mask for s in seqs]) if sft else None,
        ),
        "document",
        1,
    )
    for name in ("input_ids", "position_ids", "labels", "cu_seqlens"):
        assert torch.equal(getattr(joined, name), getattr(whole, name)), name
    assert joined.max_seqlen == whole.max_seqlen and joined.doc_lens == whole.doc_lens


def test_cross_document_batches_are_not_joined() -> None:
    batches = [sequence_to_batch(s, "cross_document", 1) for s in _sequences([[8, 8], [16]])]
    with pytest.raises(ValueError, match="document-mode"):
        concat_batches(batches)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=12), st.integers(1, 128))
def test_grouping_keeps_order_and_the_token_limit(lengths: list[int], limit: int) -> None:
    batches = [sequence_to_batch(s, "document", 1) for s in _sequences([[n] for n in lengths])]
    rows = group_microbatches(batches, limit)
    assert torch.equal(torch.cat([r.input_ids for r in rows], 1), torch.cat([b.input_ids for b in batches], 1))
    assert all(r.seq_len <= limit or len(r.doc_lens) == 1 for r in rows)
    # greedy: a row and the first sequence of the next one would not fit together
    assert all(a.seq_len + b.doc_lens[0] > limit for a, b in itertools.pairwise(rows))


@pytest.mark.parametrize("sft", [False, True])
def test_a_step_of_joined_sequences_has_the_same_loss_and_gradients(mesh: ParallelMesh, sft: bool) -> None:
    """The loop's accumulate_gradients (FSDP2 on one process): one sequence per micro-batch vs all
    four joined into one row."""
    seqs = _sequences([[20, 30, 14], [64], [9, 41, 14], [33, 31]], sft)
    results = []
    for limit in (None, 256):
        model = parallelize(_model(), mesh, "sdpa_per_doc", activation_checkpointing=False)
        batches = [sequence_to_batch(s, "document", 1) for s in seqs]
        if limit is not None:
            batches = group_microbatches(batches, limit)
        assert len(batches) == (4 if limit is None else 1)
        result = accumulate_gradients(model, batches, mesh)
        grads = {n: p.grad.full_tensor().clone() for n, p in model.named_parameters()}
        results.append((result, grads))
    (separate, separate_grads), (joined, joined_grads) = results
    assert joined.num_valid_tokens == separate.num_valid_tokens
    assert joined.loss == pytest.approx(separate.loss, rel=1e-6)
    for name, grad in separate_grads.items():
        torch.testing.assert_close(joined_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_one_chunk_loss_gives_the_chunked_gradients() -> None:
    """A sequence that fits one chunk skips the checkpoint (it would only recompute the logits):
    same loss and gradients as the same tokens in four checkpointed chunks."""
    torch.manual_seed(0)
    hidden = torch.randn(48, 16, requires_grad=True)
    weight = torch.randn(VOCAB, 16, requires_grad=True)
    labels = torch.randint(0, VOCAB, (48,))
    labels[::7] = -100
    out = []
    for chunk in (48, 12):
        loss, valid = chunked_cross_entropy(hidden, weight, labels, chunk_tokens=chunk)
        loss.backward()
        out.append((loss.detach(), int(valid), hidden.grad.clone(), weight.grad.clone()))
        hidden.grad = weight.grad = None
    (one, n1, gh1, gw1), (four, n4, gh4, gw4) = out
    assert n1 == n4 == int((labels != -100).sum())
    torch.testing.assert_close(one, four, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(gh1, gh4)
    torch.testing.assert_close(gw1, gw4)


def test_cpu_compute_dtype_auto_follows_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_cpu_compute_dtype("float32") == "float32"
    assert resolve_cpu_compute_dtype("bfloat16") == "bfloat16"
    for native, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(loss_module, "native_cpu_bf16", lambda native=native: native)
        assert resolve_cpu_compute_dtype("auto") == expected
    with pytest.raises(ValueError, match="unknown CPU compute dtype"):
        resolve_cpu_compute_dtype("float16")


def test_bf16_autocast_runs_the_matrix_products_in_bf16() -> None:
    """With cpu_autocast the decoder's linear layers run in bf16 (the loss stays float32 and close to the
    float32 one); without it nothing changes."""
    wrapped = _model()
    batch = make_packed_batch(torch.randint(0, VOCAB, (48,), generator=torch.Generator().manual_seed(0)), [30, 18])
    seen: list[torch.dtype] = []
    hook = wrapped.model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    reference, _ = wrapped(batch)
    wrapped.cpu_autocast = torch.bfloat16
    low, _ = wrapped(batch)
    hook.remove()
    assert seen == [torch.float32, torch.bfloat16]
    assert low.dtype == torch.float32 and low.item() == pytest.approx(reference.item(), rel=2e-2)
