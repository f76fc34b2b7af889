"""training.loss_kernel: auto resolves by what can run here, a forced choice that cannot run is refused,
and the loss functions never pick a kernel on their own."""

from __future__ import annotations

import pytest
import torch

from prolong.errors import UserError
from prolong.model.loss import CausalLMWithChunkedLoss, chunked_cross_entropy, resolve_loss_kernel


def test_auto_is_chunked_on_cpu_and_forced_choices() -> None:
    assert resolve_loss_kernel("auto", "cpu") == "chunked"
    assert resolve_loss_kernel("chunked", torch.device("cpu")) == "chunked"
    with pytest.raises(UserError, match=r"training.loss_kernel: liger needs liger-kernel .* CUDA device \(this run: cpu\)"):
        resolve_loss_kernel("liger", "cpu")
    with pytest.raises(ValueError, match="unknown loss kernel 'fused'"):
        resolve_loss_kernel("fused", "cpu")


def test_the_loss_takes_only_a_resolved_kernel() -> None:
    hidden, weight = torch.randn(5, 4), torch.randn(7, 4)
    labels = torch.tensor([1, 2, -100, 3, 4])
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        chunked_cross_entropy(hidden, weight, labels, kernel="auto")
    total, count = chunked_cross_entropy(hidden, weight, labels, chunk_tokens=2)
    expected = torch.nn.functional.cross_entropy(hidden @ weight.t(), labels, ignore_index=-100, reduction="sum")
    torch.testing.assert_close(total, expected)
    assert int(count) == 4
    assert CausalLMWithChunkedLoss(torch.nn.Linear(1, 1)).kernel == "chunked"  # the default never auto-switches
