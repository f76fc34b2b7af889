"""Tiled norms == untiled norms: the output bit for bit, gradients to float32 rounding (1e-6)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from prolong.parallel.parallelize import apply_activation_policies, decoder_layers
from prolong.parallel.tiled_mlp import TiledNormMixin, apply_tiled_norms
from tests.parallel.test_tiled_mlp import ARCHS, EXACT, logits_and_grads, tiny, tracked_peak


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("tile_tokens", [7, 16, 1000])  # uneven tiles, even tiles, one tile
def test_logits_and_gradients_match_untiled(arch: str, checkpointing: bool, tile_tokens: int) -> None:
    plain = tiny(arch)
    tiled = copy.deepcopy(plain)
    apply_activation_policies(plain, torch.device("cpu"), checkpointing)
    apply_activation_policies(tiled, torch.device("cpu"), checkpointing, tiled_mlp=True, mlp_tile_tokens=9)
    reference = copy.deepcopy(tiled)  # tiled MLP alone: the norms are what differs
    assert apply_tiled_norms(tiled, decoder_layers(tiled), tile_tokens) == 2 * 2 + 1  # 2 layers, final
    input_ids = torch.randint(0, 100, (1, 64), generator=torch.Generator().manual_seed(1))
    ref_logits, ref_grads = logits_and_grads(reference, input_ids)
    logits, grads = logits_and_grads(tiled, input_ids)
    assert torch.equal(logits, ref_logits)  # per token, the norm's own forward: bitwise
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], **EXACT, msg=name)


def test_tiled_norms_lower_the_tracked_peak() -> None:
    """Wide hidden, short MLP: the float32 norm copies dominate; tiling them lowers the peak."""
    config = LlamaConfig(
        vocab_size=64, hidden_size=256, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    torch.manual_seed(0)
    plain = LlamaForCausalLM(config).float().train()
    tiled = copy.deepcopy(plain)
    apply_activation_policies(plain, torch.device("cpu"), True)
    apply_activation_policies(tiled, torch.device("cpu"), True, tiled_norms=True)
    for module in tiled.modules():
        if isinstance(module, TiledNormMixin):
            module.norm_tile_tokens = 128
    input_ids = torch.randint(0, 64, (1, 2048), generator=torch.Generator().manual_seed(0))
    one_stream = 2048 * 256 * 4  # one [T, hidden] float32 tensor
    assert tracked_peak(plain, input_ids) - tracked_peak(tiled, input_ids) > 2 * one_stream


def test_per_head_norms_are_left_alone() -> None:
    """Qwen3's q/k norms act on [T, heads, head dim]: only the residual stream's norms are tiled."""
    config = Qwen3Config(
        vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16,
    )
    model = Qwen3ForCausalLM(config).float()
    reference = copy.deepcopy(model)
    assert apply_tiled_norms(model, decoder_layers(model), 5) == 3
    assert not isinstance(model.model.layers[0].self_attn.q_norm, TiledNormMixin)
    input_ids = torch.randint(0, 64, (1, 23), generator=torch.Generator().manual_seed(2))
    logits = model(input_ids=input_ids, use_cache=False).logits
    assert torch.equal(logits, reference(input_ids=input_ids, use_cache=False).logits)
    F.cross_entropy(logits[0], input_ids[0]).backward()


@pytest.mark.distributed
@pytest.mark.parametrize("case", [f"{a}_sp{sp}" for sp in (1, 2) for a in ARCHS])
def test_parallelized_step_matches_untiled_norms(policy_results: dict, case: str) -> None:
    """Through parallelize (Ulysses, checkpointing, FSDP2) and the loop's accumulation, SP 1 and 2."""
    ref, got = policy_results[case]["tiled"], policy_results[case]["tiled_norms"]
    torch.testing.assert_close(got["loss"], ref["loss"], rtol=1e-12, atol=0)
    for param, grad in got["grads"].items():
        torch.testing.assert_close(grad, ref["grads"][param], **EXACT, msg=f"{case} {param}")
    assert got["tiled_norms"] == 3 * 2 + 1 and ref["tiled_norms"] == 0
