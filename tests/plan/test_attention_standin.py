"""The planner's attention stand-in allocates what the GPU flash varlen kernels allocate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.attention.varlen  # registers torch.ops.torch_attn._varlen_attn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker

from prolong.errors import UserError
from prolong.plan.attention import plan_attention_kernel

T, H, K, D = 512, 8, 2, 64  # tokens, query heads, key/value heads (GQA), head dim


def _qkv() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    q = torch.empty(T, H, D, dtype=torch.bfloat16, requires_grad=True)
    k = torch.empty(T, K, D, dtype=torch.bfloat16, requires_grad=True)
    v = torch.empty(T, K, D, dtype=torch.bfloat16, requires_grad=True)
    return q, k, v, torch.tensor([0, T], dtype=torch.int32)


def test_forward_matches_torch_varlen_fake_outputs() -> None:
    """Same outputs as torch's own registered fake of its varlen flash kernel: out [T, H, D] and the
    float32 log-sum-exp [H, T] (the tensors the backward keeps)."""
    with FakeTensorMode():
        q, k, v, cu = _qkv()
        out = plan_attention_kernel(q, k, v, cu, T, D**-0.5)
        torch_out, torch_lse, _ = torch.ops.torch_attn._varlen_attn(
            q.detach(), k.detach(), v.detach(), cu, cu, T, T, is_causal=True, enable_gqa=True
        )
        saved = out.grad_fn.saved_tensors  # autograd's record of what backward keeps
    assert (out.shape, out.dtype) == (torch_out.shape, torch_out.dtype)
    lse = [t for t in saved if t.dtype == torch.float32]
    assert [(tuple(t.shape), t.dtype) for t in lse] == [(tuple(torch_lse.shape), torch_lse.dtype)]
    assert {tuple(t.shape) for t in saved} == {(T, H, D), (T, K, D), (H, T)}  # q, k, v, out, lse


def test_memory_kept_for_backward_and_workspace() -> None:
    """Forward keeps q, k, v (contiguous copies), out and the float32 LSE; backward adds the
    FlashAttention-2 workspace (float32 dq accumulator, softmax_d, dk/dv expanded for GQA)."""
    elt = 2  # bf16
    with FakeTensorMode():
        q, k, v, cu = _qkv()
        tracker = MemTracker()
        tracker.track_external(q, k, v)
        inputs = tracker.get_tracker_snapshot()[torch.device("cpu")]["Total"]
        with tracker:
            out = plan_attention_kernel(q, k, v, cu, T, D**-0.5)
            after_forward = tracker.get_tracker_snapshot()[torch.device("cpu")]["Total"] - inputs
            out.sum().backward()
        peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"] - inputs
    # q, k, v are contiguous already, so forward adds out and the LSE only
    assert after_forward == T * H * D * elt + H * T * 4
    workspace = (T + 128) * H * D * 4 + H * (T + 128) * 4 + 2 * T * H * D * elt
    grads = (T * H * D + 2 * T * K * D) * elt
    assert peak >= after_forward + workspace + grads


def test_refuses_real_tensors_and_sinks() -> None:
    q, k, v, cu = _qkv()
    with pytest.raises(RuntimeError, match="only runs on fake tensors"):
        plan_attention_kernel(q.detach().zero_(), k.detach().zero_(), v.detach().zero_(), cu, T, 1.0)
    with FakeTensorMode(), pytest.raises(UserError, match="sinks"):
        q, k, v, cu = _qkv()
        plan_attention_kernel(q, k, v, cu, T, 1.0, sinks=torch.empty(H))
