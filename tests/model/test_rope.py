"""RoPE theta / YaRN: suggestion rule, config round-trip through plain transformers, same logits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from model_helpers import tiny_config, tiny_model
from transformers import AutoConfig, AutoModelForCausalLM

from prolong.model.io import load_model, save_model
from prolong.model.rope import (
    YarnScaling,
    apply_rope_config,
    get_rope_theta,
    set_model_rope,
    suggest_rope_theta,
)

K = 1024


def test_dynamic_ntk_suggestions_match_the_paper():
    # Llama-3: theta 5e5, 8K -> 64K, head dim 128 -> ~4e6 (paper: "suggests 4e6").
    assert suggest_rope_theta(8 * K, 64 * K, 128) == pytest.approx(4e6, rel=0.05)
    # From the 64K stage (theta 8e6) to 512K -> ~6.4e7 (paper: "6.4e7 for 512K").
    assert suggest_rope_theta(64 * K, 512 * K, 128, base_theta=8e6) == pytest.approx(6.4e7, rel=0.05)
    assert suggest_rope_theta(8 * K, 8 * K, 128) == 5e5
    with pytest.raises(ValueError):
        suggest_rope_theta(8 * K, 64 * K, 7)


def test_apply_theta_keeps_type_and_sets_length():
    config = apply_rope_config(tiny_config("llama"), theta=8e6, max_position_embeddings=64 * K)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 8e6}
    assert config.max_position_embeddings == 64 * K and get_rope_theta(config) == 8e6


def test_yarn_replaces_llama3_scaling():
    """UltraLong starts from Llama-3.1 (rope_type llama3): YaRN replaces that scaling, theta is kept."""
    config = tiny_config("llama")
    config.rope_parameters = {
        "rope_type": "llama3",
        "rope_theta": 5e5,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    apply_rope_config(config, yarn=YarnScaling.for_lengths(8 * K, 1024 * K))
    assert config.rope_parameters == {
        "rope_type": "yarn",
        "factor": 128.0,
        "original_max_position_embeddings": 8 * K,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "rope_theta": 5e5,
    }
    assert config.max_position_embeddings == 1024 * K


@pytest.mark.parametrize(
    "rope",
    [
        {"theta": 8e6, "max_position_embeddings": 4096},
        {"yarn": {"factor": 4.0, "original_max_position_embeddings": 256, "beta_fast": 16, "beta_slow": 2}},
    ],
    ids=["theta", "yarn"],
)
def test_round_trip_through_plain_transformers(tmp_path, rope):
    """Save with prolong, reload with bare AutoModelForCausalLM: same config and logits, and the new RoPE
    really changes the model (logits differ from the original)."""
    base = tiny_model("mistral", 2, attn="sdpa")
    ids = torch.randint(0, 96, (1, 300), generator=torch.Generator().manual_seed(0))
    before = base(input_ids=ids, use_cache=False).logits
    set_model_rope(base, **rope)
    after = base(input_ids=ids, use_cache=False).logits
    assert (after - before).abs().max() > 1e-3
    save_model(base, None, tmp_path / "ckpt")

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", attn_implementation="sdpa")
    assert reloaded.config.rope_parameters == base.config.rope_parameters
    assert reloaded.config.max_position_embeddings == base.config.max_position_embeddings
    torch.testing.assert_close(reloaded(input_ids=ids, use_cache=False).logits, after, atol=1e-5, rtol=1e-5)

    # load_model applying the same RoPE to the original weights gives the same model.
    save_model(tiny_model("mistral", 2, attn="sdpa"), None, tmp_path / "orig")
    theta = rope.get("theta")
    via_load = load_model(
        tmp_path / "orig",
        attn_implementation="sdpa",
        rope_theta=theta,
        yarn=rope.get("yarn"),
        max_position_embeddings=rope.get("max_position_embeddings"),
    )
    torch.testing.assert_close(via_load(input_ids=ids, use_cache=False).logits, after, atol=1e-5, rtol=1e-5)


def test_checkpoint_loads_in_a_process_without_prolong(tmp_path):
    """An exported YaRN checkpoint saved with prolong's attention loads in a fresh interpreter that never
    imports prolong (so no registered attention) and gives the same logits."""
    model = tiny_model("qwen2", 2, attn="auto")
    set_model_rope(model, yarn=YarnScaling.for_lengths(128, 1024))
    ids = torch.randint(0, 96, (1, 40), generator=torch.Generator().manual_seed(0))
    expected = model(input_ids=ids, use_cache=False).logits[0]
    save_model(model, None, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert "prolong" not in json.dumps(config)
    torch.save({"ids": ids, "logits": expected.detach()}, tmp_path / "expected.pt")
    script = f"""
import sys, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({str(tmp_path / "ckpt")!r})
e = torch.load({str(tmp_path / "expected.pt")!r})
got = m(input_ids=e["ids"], use_cache=False).logits[0]
assert "prolong" not in sys.modules
assert m.config.rope_parameters["rope_type"] == "yarn", m.config.rope_parameters
print(float((got - e["logits"]).abs().max()))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) <= 1e-5


def test_legacy_rope_keys_are_read(tmp_path):
    """An old-style config.json (rope_theta + rope_scaling) still loads into rope_parameters."""
    save_model(tiny_model("llama", 4, attn="sdpa"), None, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    config = json.loads(path.read_text())
    config.pop("rope_parameters")
    config.update(
        rope_theta=5e5,
        rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 512},
    )
    path.write_text(json.dumps(config))
    loaded = AutoConfig.from_pretrained(tmp_path / "ckpt")
    assert loaded.rope_parameters["rope_theta"] == 5e5 and loaded.rope_parameters["rope_type"] == "yarn"
    apply_rope_config(loaded, theta=1e6)
    assert loaded.rope_parameters["rope_theta"] == 1e6 and loaded.rope_parameters["factor"] == 2.0


LLAMA31_ROPE = {  # Llama-3.1's rope scaling, with a tiny original length so that 300 tokens exercise it
    "rope_type": "llama3",
    "rope_theta": 5e5,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
QWEN_YARN_ROPE = {
    "rope_type": "yarn",
    "rope_theta": 1e6,
    "factor": 4.0,
    "original_max_position_embeddings": 64,
}
SCALED = [("llama", 4, LLAMA31_ROPE), ("qwen2", 2, QWEN_YARN_ROPE)]


def _scaled_model(arch: str, kv_heads: int, rope: dict):
    model = tiny_model(arch, kv_heads, attn="sdpa", rope_parameters=dict(rope))
    assert model.config.rope_parameters["rope_type"] == rope["rope_type"]
    return model


def _reloads_with_same_logits(model, ids, tmp_path) -> None:
    """The exported checkpoint reloads in plain transformers with the same RoPE and logits."""
    expected = model(input_ids=ids, use_cache=False).logits
    save_model(model, None, tmp_path / "ckpt")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", attn_implementation="sdpa")
    assert reloaded.config.rope_parameters == model.config.rope_parameters
    torch.testing.assert_close(
        reloaded(input_ids=ids, use_cache=False).logits, expected, atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("arch, kv_heads, rope", SCALED, ids=["llama3", "qwen-yarn"])
def test_theta_on_an_already_scaled_model_keeps_the_scaling(tmp_path, arch, kv_heads, rope):
    """ProLong's theta raise on Llama-3.1 / Qwen-YaRN: the scaling stays, applied on the new base."""
    model = _scaled_model(arch, kv_heads, rope)
    ids = torch.randint(0, 96, (1, 300), generator=torch.Generator().manual_seed(0))
    before = model(input_ids=ids, use_cache=False).logits
    set_model_rope(model, theta=8e6, max_position_embeddings=2048)
    assert model.config.rope_parameters == {**rope, "rope_theta": 8e6}
    after = model(input_ids=ids, use_cache=False).logits
    assert (after - before).abs().max() > 1e-3  # the new base really changes the model
    _reloads_with_same_logits(model, ids, tmp_path)


@pytest.mark.parametrize("arch, kv_heads, rope", SCALED, ids=["llama3", "qwen-yarn"])
def test_yarn_replaces_a_scaling_counted_from_the_same_length(tmp_path, arch, kv_heads, rope):
    """UltraLong's YaRN on Llama-3.1 (and YaRN on Qwen's YaRN): replaced, same original length."""
    model = _scaled_model(arch, kv_heads, rope)
    ids = torch.randint(0, 96, (1, 300), generator=torch.Generator().manual_seed(1))
    before = model(input_ids=ids, use_cache=False).logits
    set_model_rope(model, yarn=YarnScaling.for_lengths(64, 1024))
    assert model.config.rope_parameters == {
        "rope_type": "yarn",
        "factor": 16.0,
        "original_max_position_embeddings": 64,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "rope_theta": rope["rope_theta"],
    }
    assert model.config.max_position_embeddings == 1024
    assert (model(input_ids=ids, use_cache=False).logits - before).abs().max() > 1e-3
    _reloads_with_same_logits(model, ids, tmp_path)


def test_yarn_counted_from_another_length_is_refused():
    config = tiny_config("llama", 4, rope_parameters=dict(LLAMA31_ROPE))
    with pytest.raises(
        ValueError, match="'llama3' scaling counts from 64 pretrained tokens.*factor = target length / 64"
    ):
        apply_rope_config(config, yarn=YarnScaling.for_lengths(128, 1024))
    assert config.rope_parameters == LLAMA31_ROPE  # unchanged


def test_yarn_over_an_undefined_combination_is_refused():
    config = tiny_config(
        "llama", 4, rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}
    )
    with pytest.raises(ValueError, match="rope_type 'linear'.*not defined"):
        apply_rope_config(config, yarn=YarnScaling.for_lengths(64, 1024))
