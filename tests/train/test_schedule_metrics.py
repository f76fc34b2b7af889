"""Schedule, optimizer groups and the mask-aware FLOP count."""

from __future__ import annotations

import itertools
import math

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from prolong.config import OptimizerSpec
from prolong.train.metrics import matmul_params, training_flops
from prolong.train.schedule import build_optimizer, lr_at


def test_warmup_then_cosine_to_min() -> None:
    lrs = [lr_at(step, 100, 10, 1e-3, 1e-4) for step in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # linear warmup, peak at its end
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))  # then only down
    assert lrs[-1] == pytest.approx(1e-4)  # the last step trains at the minimum
    assert lrs[55] == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 46 / 90)))
    assert lr_at(0, 5, 0, 2e-5, 2e-6) < 2e-5  # no warmup: cosine from the first step


def test_no_weight_decay_on_norms_and_biases() -> None:
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_bias=True,
    )
    model = LlamaForCausalLM(config)
    optimizer = build_optimizer(model, OptimizerSpec(), lr=1e-3)
    decayed, plain = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(names[id(p)].endswith(("norm.weight", "bias")) for p in plain["params"])
    assert any(names[id(p)].endswith("q_proj.bias") for p in plain["params"])
    assert all(p.ndim == 2 for p in decayed["params"])
    assert optimizer.defaults["betas"] == (0.9, 0.95)


def test_attention_flops_count_squared_document_lengths() -> None:
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config)
    body = sum(p.numel() for n, p in model.named_parameters() if "layers" in n and p.ndim == 2)
    assert matmul_params(config) == body + 64 * 1000
    one_doc = training_flops(config, 1024, 1024**2)
    eight_docs = training_flops(config, 1024, 8 * 128**2)
    linear = 6 * matmul_params(config) * 1024
    assert one_doc - linear == pytest.approx(8 * (eight_docs - linear))  # 8 docs of T/8: 1/8 of the attention
    assert eight_docs - linear == 6 * 2 * 64 * 8 * 128**2
