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
    UnsupportedAttentionError,
    attention_name,
    available_backends,
    cu_seqlens_from_position_ids,
    document_attention,
    register_attention,
    resolve_backend,
)

DOC_BACKENDS = [b for b in available_backends() if b != "causal"]


def _reference(q_THD, k_THD, v_THD, doc_lens, scale, window=None, softcap=None, sinks=None):
    """Each document alone with an explicit [L, L] mask and repeated K/V heads (the obvious way), with
    Gemma-2's soft-capping and gpt-oss's sinks written as their eager attention writes them."""
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
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        scores = scores.masked_fill(~mask, float("-inf"))
        if sinks is not None:
            scores = torch.cat([scores, sinks[:, None, None].expand(-1, n, 1)], -1)
        probs = torch.softmax(scores, -1)
        outs.append((probs[..., :n] if sinks is not None else probs) @ v)
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
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa_per_doc", "causal"])
@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("feature", ["softcap", "sinks", "both"])
def test_softcap_and_sinks_are_exact(backend, kv_heads, window, feature):
    """Soft-capping and sinks through the explicit-score path equal the eager formulas, outputs and grads
    (sinks included); the causal backend treats the row as one document."""
    doc_lens = [5, 1, 9, 4] if backend == "sdpa_per_doc" else [19]
    q, k, v, cu = _qkv(doc_lens, kv_heads=kv_heads)
    q = (q * 3).detach().requires_grad_()  # scores of a few units, where a cap of 2 matters
    sinks = torch.randn(4, generator=torch.Generator().manual_seed(3)).requires_grad_()
    features = {
        "softcap": 2.0 if feature in ("softcap", "both") else None,
        "sinks": sinks if feature in ("sinks", "both") else None,
    }
    out = document_attention(q, k, v, cu, 19, 0.3, backend=backend, sliding_window=window, **features)
    ref = _reference(q, k, v, doc_lens, 0.3, window, **features)
    plain = _reference(q, k, v, doc_lens, 0.3, window)
    assert (ref - plain).abs().max() > 1e-2  # the feature matters here
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    inputs = (q, k, v, sinks) if features["sinks"] is not None else (q, k, v)
    weights = torch.arange(out.numel()).view_as(out).sin()
    grads = torch.autograd.grad((out * weights).sum(), inputs)
    ref_grads = torch.autograd.grad((ref * weights).sum(), inputs)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_cuda_backends_refuse_what_they_cannot_compute(monkeypatch):
    """varlen cannot soft-cap nor take sinks, flash_attn cannot take sinks: a forced one is a clear
    error naming the family and the argument; auto falls back to a backend that can."""
    from prolong.model import attention

    monkeypatch.setattr(attention, "_problem", lambda backend, device: None)  # pretend the GPU kernels run
    bf16 = torch.bfloat16
    with pytest.raises(
        UnsupportedAttentionError, match="gemma2 passes `softcap`.*'varlen' cannot.*flash_attn"
    ):
        resolve_backend("varlen", "cuda", bf16, frozenset({"softcap"}), family="gemma2")
    with pytest.raises(UnsupportedAttentionError, match="gpt_oss passes `s_aux`.*'flash_attn' cannot"):
        resolve_backend("flash_attn", "cuda", bf16, frozenset({"sinks"}), family="gpt_oss")
    assert (
        resolve_backend("flash_attn", "cuda", bf16, frozenset({"softcap", "sliding_window"})) == "flash_attn"
    )
    assert resolve_backend("auto", "cuda", bf16, frozenset({"sliding_window"})) == "varlen"
    assert resolve_backend("auto", "cuda", bf16, frozenset({"softcap"})) == "flash_attn"
    assert resolve_backend("auto", "cuda", bf16, frozenset({"sinks"})) == "sdpa_per_doc"


def _call_adapter(**kwargs):
    q, k, v = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    module = tiny_model("qwen2", 2).model.layers[0].self_attn
    return AttentionInterface()[register_attention()](module, q, k, v, None, scaling=0.3, **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"position_bias": torch.zeros(1)}, "qwen2 .*passes `position_bias`.*does not implement it"),
        ({"output_attentions": True}, "output_attentions=True"),
        ({"is_causal": False}, "is_causal=False"),
        ({"sinks": torch.zeros(1, 4, 6, 1)}, "passes `sinks`"),  # per-token sinks (inkling2): not implemented
        ({"s_aux": torch.zeros(3)}, "one logit per query head"),
        ({"softcap": -1.0}, "positive cap"),
        ({"cu_seq_lens_q": torch.tensor([0, 6]), "cu_seq_lens_k": torch.tensor([0, 3, 6])}, "cu_seq_lens_k"),
    ],
)
def test_adapter_refuses_what_it_does_not_implement(kwargs, message):
    with pytest.raises(UnsupportedAttentionError, match=message):
        _call_adapter(**kwargs)


def test_adapter_ignores_only_keywords_that_change_nothing():
    out, _ = _call_adapter(output_attentions=False, use_cache=False, position_ids=None, logits_to_keep=1)
    assert out.shape == (1, 6, 4, 8)


@pytest.mark.parametrize(
    "arch, overrides",
    [
        (
            "gemma2",
            {
                "attn_logit_softcapping": 1.0,
                "query_pre_attn_scalar": 8,
                "sliding_window": 3,
                "layer_types": ["sliding_attention", "full_attention"],
            },
        ),
        (
            "gpt_oss",
            {
                "num_local_experts": 2,
                "num_experts_per_tok": 1,
                "sliding_window": 3,
                "layer_types": ["sliding_attention", "full_attention"],
            },
        ),
    ],
)
def test_dense_path_keeps_softcap_sinks_and_windows_in_generation(arch, overrides):
    """Padded, cached generation (the dense path) of a soft-capped / sinked family equals its eager one."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        arch,
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        initializer_range=0.2,
        pad_token_id=0,
        **overrides,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    ids = torch.randint(4, 90, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    kwargs = {
        "input_ids": ids,
        "attention_mask": mask,
        "max_new_tokens": 5,
        "do_sample": False,
        "pad_token_id": 0,
    }
    want_tokens, want_logits = model.generate(**kwargs), model(input_ids=ids, attention_mask=mask).logits
    model.set_attn_implementation(register_attention())
    torch.testing.assert_close(
        model(input_ids=ids, attention_mask=mask).logits[0], want_logits[0], atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        model(input_ids=ids, attention_mask=mask).logits[1, 3:], want_logits[1, 3:], atol=1e-5, rtol=1e-5
    )
    assert torch.equal(model.generate(**kwargs), want_tokens)


def test_dense_path_with_gradients_uses_the_masked_kernel():
    """The mask-free prefill merge gives no gradient to its log-sum-exp, so with autograd the dense path
    takes masked SDPA: gradients equal the bottom-right masked reference."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 5, 8, generator=g).requires_grad_()
    k, v = (torch.randn(1, 2, 12, 8, generator=g).requires_grad_() for _ in range(2))
    attention = AttentionInterface()[register_attention()]
    out, _ = attention(torch.nn.Module(), q, k, v, None, scaling=0.3)
    mask = torch.ones(5, 12, dtype=torch.bool).tril(diagonal=7)
    ref = F.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=mask, scale=0.3
    )
    weights = torch.arange(out.numel()).view_as(out).cos()
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref.transpose(1, 2) * weights).sum(), (q, k, v))
    for got, want in zip(grads, ref_grads, strict=True):
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
