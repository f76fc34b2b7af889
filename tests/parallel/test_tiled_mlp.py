"""Tiled MLP == untiled MLP: logits and gradients (float32, 1e-6), alone and through `parallelize`."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from prolong.errors import UserError
from prolong.parallel.parallelize import apply_activation_policies, decoder_layers
from prolong.parallel.tiled_mlp import (
    AUTO_MIN_TOKENS,
    MIN_TILE_TOKENS,
    TiledMLPMixin,
    apply_tiled_mlp,
    auto_tile_tokens,
    resolve_tiled_mlp,
    tile_mlp,
)

ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {"sliding_window": None}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
}
EXACT = {"rtol": 1e-6, "atol": 1e-6}


def tiny(arch: str) -> torch.nn.Module:
    config_cls, model_cls, extra = ARCHS[arch]
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        **extra,
    )
    return model_cls(config).float().train()


def logits_and_grads(model: torch.nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    logits = model(input_ids=input_ids, use_cache=False).logits
    F.cross_entropy(logits[0, :-1], input_ids[0, 1:]).backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("tile_tokens", [7, 16, 1000])  # uneven tiles, even tiles, one tile
def test_logits_and_gradients_match_untiled(arch: str, checkpointing: bool, tile_tokens: int) -> None:
    plain = tiny(arch)
    tiled = copy.deepcopy(plain)
    apply_activation_policies(plain, torch.device("cpu"), checkpointing)
    apply_activation_policies(
        tiled, torch.device("cpu"), checkpointing, tiled_mlp=True, mlp_tile_tokens=tile_tokens
    )
    assert all(isinstance(layer.mlp, TiledMLPMixin) for layer in decoder_layers(tiled))
    input_ids = torch.randint(0, 100, (1, 64), generator=torch.Generator().manual_seed(1))
    ref_logits, ref_grads = logits_and_grads(plain, input_ids)
    logits, grads = logits_and_grads(tiled, input_ids)
    torch.testing.assert_close(logits, ref_logits, **EXACT)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], **EXACT, msg=name)


def test_tiles_run_one_at_a_time() -> None:
    """The MLP's forward sees tiles, never the whole sequence: in forward and in the backward recompute."""
    model = tiny("llama")
    apply_tiled_mlp(decoder_layers(model), tile_tokens=10)
    seen: list[int] = []
    model.model.layers[0].mlp.gate_proj.register_forward_hook(
        lambda m, args, out: seen.append(args[0].shape[-2])
    )
    model(input_ids=torch.randint(0, 100, (1, 25)), use_cache=False).logits.sum().backward()
    assert seen == [10, 10, 5] * 2  # forward, then one recompute per tile in backward


def tracked_peak(model: torch.nn.Module, input_ids: torch.Tensor) -> int:
    """Peak bytes of live tensors over forward + backward, by torch's MemTracker (as the planner uses)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        model(input_ids=input_ids, use_cache=False).logits.sum().backward()
    return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]


def test_tiling_lowers_the_tracked_peak() -> None:
    """At 2K tokens x intermediate 704 the MLP temporaries dominate; tiles of 128 remove most of them."""
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=704,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    torch.manual_seed(0)
    plain = LlamaForCausalLM(config).float().train()
    tiled = copy.deepcopy(plain)
    apply_activation_policies(plain, torch.device("cpu"), True)
    apply_activation_policies(tiled, torch.device("cpu"), True, tiled_mlp=True, mlp_tile_tokens=128)
    input_ids = torch.randint(0, 64, (1, 2048), generator=torch.Generator().manual_seed(0))
    untiled_peak, tiled_peak = tracked_peak(plain, input_ids), tracked_peak(tiled, input_ids)
    one_intermediate = 2048 * 704 * 4  # one [T, intermediate] float32 tensor
    assert untiled_peak - tiled_peak > 4 * one_intermediate  # measured: 36.7 vs 6.6 MiB, 5.5 each


def test_state_dict_and_names_unchanged() -> None:
    plain, tiled = tiny("qwen2"), tiny("qwen2")
    apply_tiled_mlp(decoder_layers(tiled))
    assert list(tiled.state_dict()) == list(plain.state_dict())
    assert isinstance(tiled.model.layers[1].mlp, type(plain.model.layers[1].mlp))  # a subclass of the HF one
    tile_mlp(tiled.model.layers[1].mlp, 99)  # applying again only changes the tile size
    assert type(tiled.model.layers[1].mlp).__mro__.count(TiledMLPMixin) == 1
    assert tiled.model.layers[1].mlp.mlp_tile_tokens == 99


def test_mixture_of_experts_is_refused() -> None:
    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=2,
    )
    model = MixtralForCausalLM(config)
    with pytest.raises(UserError, match="decoder layer 0.*mixture of experts.*tiled_mlp: false"):
        apply_tiled_mlp(decoder_layers(model))
    assert not any(isinstance(m, TiledMLPMixin) for m in model.modules())  # nothing half-applied


def test_layer_without_mlp_is_refused() -> None:
    with pytest.raises(UserError, match="decoder layer 0 .*has no `mlp`"):
        apply_tiled_mlp([torch.nn.Linear(2, 2)])
    with pytest.raises(UserError, match="must be positive"):
        apply_tiled_mlp(decoder_layers(tiny("llama")), tile_tokens=0)


@settings(max_examples=200, deadline=None)
@given(tokens=st.integers(1, 4_000_000), hidden=st.integers(16, 16_384))
def test_auto_tile_size(tokens: int, hidden: int) -> None:
    tile = auto_tile_tokens(tokens, hidden)
    tiles = -(-tokens // tile)
    assert tiles == -(-tokens // max(hidden, MIN_TILE_TOKENS))  # as many tiles as the target size needs
    assert tile <= max(hidden, MIN_TILE_TOKENS)
    assert tile * tiles - tokens < tiles  # tiles equal to within one token


def test_auto_switches_on_only_at_long_sequences() -> None:
    assert resolve_tiled_mlp("auto", AUTO_MIN_TOKENS) and not resolve_tiled_mlp("auto", AUTO_MIN_TOKENS - 1)
    assert resolve_tiled_mlp(True, 8) and not resolve_tiled_mlp(False, 10**7)
    assert auto_tile_tokens(512 * 1024, 4096) == 4096  # Llama-8B at 512K per rank: 128 tiles
    with pytest.raises(ValueError, match="auto"):
        resolve_tiled_mlp("yes", 8)


@pytest.mark.distributed
@pytest.mark.parametrize("case", [f"{a}_sp{sp}" for sp in (1, 2) for a in ARCHS])
def test_parallelized_step_matches_untiled(policy_results: dict, case: str) -> None:
    """Through parallelize (Ulysses, checkpointing, FSDP2) and the loop's accumulation, SP 1 and 2."""
    results = policy_results[case]
    for ref_name, name in (("plain", "tiled"), ("offload", "offload_tiled")):
        ref, got = results[ref_name], results[name]
        assert (ref["tiled_layers"], got["tiled_layers"]) == (0, 3)
        torch.testing.assert_close(got["loss"], ref["loss"], **EXACT, msg=f"{case} {name}")
        assert got["grads"].keys() == ref["grads"].keys()
        for param, grad in got["grads"].items():
            torch.testing.assert_close(grad, ref["grads"][param], **EXACT, msg=f"{case} {name} {param}")
