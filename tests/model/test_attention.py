"""The attention kernel and its registration: per-document results, GQA, sliding window, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_helpers import tiny_model
from transformers import AttentionInterface

from prolong.model.attention import (
    BACKENDS,
    BackendUnavailableError,
    attention_name,
    available_backends,
    cu_seqlens_from_position_ids,
    document_attention,
    register_attention,
    resolve_backend,
)

DOC_BACKENDS = [b for b in available_backends() if b != "causal"]


def _reference(q_THD, k_THD, v_THD, doc_lens, scale, window=None):
    """Each document alone with an explicit [L, L] mask and repeated K/V heads (the obvious way)."""
    rep = q_THD.shape[1] // k_THD.shape[1]
    outs, start = [], 0
    for n in doc_lens:
        q = q_THD[start : start + n].transpose(0, 1)
        k = k_THD[start : start + n].transpose(0, 1).repeat_interleave(rep, 0)
        v = v_THD[start : start + n].transpose(0, 1).repeat_interleave(rep, 0)
        i = torch.arange(n)
        mask = i[None, :] <= i[:, None]
        if window is not None:
            mask &= i[None, :] > i[:, None] - window
        scores = (q @ k.transpose(1, 2)) * scale
        outs.append(torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v)
        start += n
    return torch.cat(outs, 1).transpose(0, 1)


def _qkv(doc_lens, heads=4, kv_heads=2, dim=8, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(0)
    total = sum(doc_lens)
    q = torch.randn(total, heads, dim, generator=g).to(device, dtype).requires_grad_()
    k = torch.randn(total, kv_heads, dim, generator=g).to(device, dtype).requires_grad_()
    v = torch.randn(total, kv_heads, dim, generator=g).to(device, dtype).requires_grad_()
    cu = torch.tensor([0, *torch.tensor(doc_lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    return q, k, v, cu


@pytest.mark.parametrize("backend", DOC_BACKENDS)
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("window", [None, 3])
def test_document_attention_matches_reference_outputs_and_grads(backend, kv_heads, window):
    doc_lens = [5, 1, 9, 4]
    q, k, v, cu = _qkv(doc_lens, kv_heads=kv_heads)
    out = document_attention(q, k, v, cu, max(doc_lens), 0.3, backend=backend, sliding_window=window)
    ref = _reference(q, k, v, doc_lens, 0.3, window)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    grads = torch.autograd.grad((out * torch.arange(out.numel()).view_as(out).sin()).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * torch.arange(ref.numel()).view_as(ref).sin()).sum(), (q, k, v))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_causal_backend_ignores_boundaries():
    q, k, v, cu = _qkv([3, 4])
    out = document_attention(q, k, v, cu, 4, 0.5, backend="causal")
    ref = _reference(q, k, v, [7], 0.5)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def test_cu_seqlens_from_position_ids():
    pos = torch.tensor([[0, 1, 2, 0, 0, 1]])
    assert cu_seqlens_from_position_ids(pos).tolist() == [0, 3, 4, 6]
    assert cu_seqlens_from_position_ids(torch.tensor([[3, 4, 0]])).tolist() == [0, 2, 3]


def test_auto_is_sdpa_per_doc_on_cpu_and_never_causal():
    assert resolve_backend("auto", "cpu") == "sdpa_per_doc"
    assert resolve_backend("auto", "cpu", torch.bfloat16) == "sdpa_per_doc"
    assert "sdpa_per_doc" in available_backends("cpu") and "causal" in available_backends("cpu")
    assert set(available_backends("cpu")) <= set(BACKENDS)


@pytest.mark.parametrize("backend", ["varlen", "flash_attn"])
def test_forcing_an_unavailable_backend_is_a_clear_error(backend):
    with pytest.raises(BackendUnavailableError, match=f"'{backend}' is not available on cpu"):
        resolve_backend(backend, "cpu")
    with pytest.raises(BackendUnavailableError, match="Available here"):
        register_attention(backend, device="cpu")
    q, k, v, cu = _qkv([2, 2])
    with pytest.raises(BackendUnavailableError):
        document_attention(q, k, v, cu, 2, 1.0, backend=backend)


def test_unknown_backend_and_shape_errors():
    with pytest.raises(ValueError, match="unknown attention backend 'fast'"):
        resolve_backend("fast", "cpu")
    with pytest.raises(ValueError, match="cross_document is a batch mode.*'causal'"):
        resolve_backend("cross_document", "cpu")
    q, k, v, cu = _qkv([2, 2])
    with pytest.raises(ValueError, match="cu_seqlens covers 4 tokens but the query has 3"):
        document_attention(q[:3], k[:3], v[:3], cu, 2, 1.0, backend="sdpa_per_doc")
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        document_attention(q[:, :3], k, v, cu, 2, 1.0, backend="sdpa_per_doc")


def test_register_returns_names_known_to_transformers():
    assert register_attention() == "prolong"
    assert register_attention("sdpa_per_doc") == "prolong_per_doc"
    assert register_attention("causal") == "prolong_causal"
    for name in ("prolong", "prolong_per_doc", "prolong_causal"):
        assert name in AttentionInterface()
    # transformers reads "sdpa"/"flash" in a name as a request for its own kernels (SDPA support checks,
    # flash-attn imports): no prolong name may contain them, whatever is bound
    for backend in ("auto", *BACKENDS):
        for kernel_name, strict in ((None, False), ("ulysses2-pg0", True)):
            name = attention_name(backend, kernel_name, strict)
            assert not any(word in name for word in ("sdpa", "flash", "flex", "paged", "eager")), name


def test_a_model_without_sdpa_support_takes_the_per_document_kernel():
    """Regression: gpt-oss declares _supports_sdpa = False; a name containing "sdpa" made transformers
    refuse prolong's per-document kernel for it."""
    from transformers import GptOssConfig, GptOssForCausalLM

    config = GptOssConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_local_experts=2,
        num_experts_per_tok=1,
        layer_types=["full_attention"],
    )
    model = GptOssForCausalLM(config)
    model.set_attn_implementation(register_attention("sdpa_per_doc"))
    assert model.config._attn_implementation == "prolong_per_doc"


def test_names_encode_the_bound_kernel():
    """Two different bindings never share a registry entry; the same binding always gets the same name."""

    def spy(*args, **kwargs):
        return document_attention(*args, **kwargs)

    a = register_attention("sdpa_per_doc", kernel=spy, kernel_name="ulysses2-pg1", require_boundaries=True)
    b = register_attention("sdpa_per_doc", kernel=spy, kernel_name="ulysses2-pg2", require_boundaries=True)
    assert a == "prolong_ulysses2-pg1_per_doc_strict" and a != b
    assert AttentionInterface()[a] is not AttentionInterface()[b]
    with pytest.raises(ValueError, match="kernel and kernel_name together"):
        register_attention("sdpa_per_doc", kernel=spy)


def test_generation_with_cache_and_padding_matches_sdpa():
    """Without cu_seqlens (evaluation, generate with a KV cache, left padding) we match plain sdpa."""
    ours = tiny_model("qwen2", 2, attn="auto")
    ref = tiny_model("qwen2", 2, attn="sdpa")
    ids = torch.randint(4, 90, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding on the second row
    kwargs = {
        "input_ids": ids,
        "attention_mask": mask,
        "max_new_tokens": 4,
        "do_sample": False,
        "pad_token_id": 0,
    }
    assert torch.equal(ours.generate(**kwargs), ref.generate(**kwargs))
    logits_ours = ours(input_ids=ids, attention_mask=mask).logits
    logits_ref = ref(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(logits_ours[0], logits_ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits_ours[1, 2:], logits_ref[1, 2:], atol=1e-5, rtol=1e-5)


def test_attention_dropout_is_refused():
    model = tiny_model("llama", 4, attn="auto", attention_dropout=0.1).train()
    with pytest.raises(ValueError, match="dropout"):
        model(input_ids=torch.tensor([[1, 2, 3]]))


def test_sdpa_enable_gqa_used_not_repeat():
    """GQA runs through SDPA's enable_gqa, so K/V are never expanded to H heads."""
    q, k, v, cu = _qkv([6], heads=4, kv_heads=1)
    expanded = document_attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), cu, 6, 0.2)
    torch.testing.assert_close(document_attention(q, k, v, cu, 6, 0.2), expanded)
    torch.testing.assert_close(
        document_attention(q, k, v, cu, 6, 0.2),
        F.scaled_dot_product_attention(
            q.transpose(0, 1),
            k.transpose(0, 1),
            v.transpose(0, 1),
            is_causal=True,
            scale=0.2,
            enable_gqa=True,
        ).transpose(0, 1),
    )


@pytest.mark.parametrize("kv_heads, window", [(4, None), (2, None), (2, 3)])
def test_per_document_path_uses_a_fused_kernel(kv_heads, window):
    """Regression: 3-D inputs make SDPA fall back to the math kernel, which stores [H, L, L] weights
    (quadratic memory). Restricted to the fused flash kernel, our path must still run, forward and backward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v, cu = _qkv([5, 9, 4], kv_heads=kv_heads)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = document_attention(q, k, v, cu, 9, 0.3, backend="sdpa_per_doc", sliding_window=window)
        out.sum().backward()
    torch.testing.assert_close(out, _reference(q, k, v, [5, 9, 4], 0.3, window), atol=1e-6, rtol=1e-5)


def test_a_replacement_kernel_can_be_registered():
    """The sequence-parallel wrapper plugs in with document_attention's signature and gets the global
    boundaries from the batch, through the same transformers plumbing."""
    from prolong.model.batch import attention_kwargs, make_packed_batch

    calls = []

    def spy_kernel(q_THD, k_THD, v_THD, cu_seqlens, max_seqlen, scale, backend, sliding_window, **features):
        calls.append((tuple(q_THD.shape), tuple(k_THD.shape), cu_seqlens.tolist(), max_seqlen, backend))
        return document_attention(
            q_THD, k_THD, v_THD, cu_seqlens, max_seqlen, scale, backend, sliding_window, **features
        )

    name = register_attention("sdpa_per_doc", kernel=spy_kernel, kernel_name="spy")
    assert name == "prolong_spy_per_doc"
    model = tiny_model("qwen2", 2, attn="sdpa")
    model.set_attn_implementation(name)
    batch = make_packed_batch(torch.arange(10), [4, 6])
    spied = model(input_ids=batch.input_ids, **attention_kwargs(batch)).logits
    model.set_attn_implementation(register_attention("sdpa_per_doc"))
    plain = model(input_ids=batch.input_ids, **attention_kwargs(batch)).logits
    torch.testing.assert_close(spied, plain)
    assert calls == [((10, 4, 16), (10, 2, 16), [0, 4, 10], 6, "sdpa_per_doc")] * 2  # one per layer


def test_strict_adapter_refuses_calls_without_boundaries():
    """require_boundaries (Ulysses): position ids alone are never turned into boundaries."""
    name = register_attention(
        "sdpa_per_doc", kernel=document_attention, kernel_name="doc", require_boundaries=True
    )
    model = tiny_model("qwen2", 2, attn="sdpa")
    model.set_attn_implementation(name)
    with pytest.raises(ValueError, match="needs the batch's global document boundaries"):
        model(
            input_ids=torch.arange(6)[None], position_ids=torch.tensor([[0, 1, 2, 0, 1, 2]]), use_cache=False
        )


@pytest.mark.parametrize("q_len,kv_len,kv_heads", [(16, 40, 2), (1, 40, 4), (24, 24, 2)])
def test_dense_path_mask_free_prefill_matches_masked_sdpa(q_len: int, kv_len: int, kv_heads: int) -> None:
    """Chunked prefill through the adapter (no boundaries, no padding: the mask-free merge of two
    log-sum-exp halves) equals SDPA with the bottom-right causal mask."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, q_len, 8, generator=g)
    k, v = torch.randn(2, kv_heads, kv_len, 8, generator=g), torch.randn(2, kv_heads, kv_len, 8, generator=g)
    mask = torch.ones(q_len, kv_len, dtype=torch.bool).tril(diagonal=kv_len - q_len)
    expected = F.scaled_dot_product_attention(
        q, k.repeat_interleave(4 // kv_heads, 1), v.repeat_interleave(4 // kv_heads, 1), attn_mask=mask
    )
    attention = AttentionInterface()[register_attention()]
    out, _ = attention(torch.nn.Module(), q, k, v, None, scaling=None)
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=1e-5, atol=1e-5)
