"""init / save / load through the same from_pretrained path as a real checkpoint; safetensors only."""

from __future__ import annotations

import pytest
import torch
from model_helpers import ARCHS
from transformers import AutoModelForCausalLM

from prolong.model import commands
from prolong.model.io import init_model, load_model, load_tokenizer, save_model

SMALL = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "max_position_embeddings": 2048,
    "rope_theta": 5e5,
    "seed": 3,
}


@pytest.mark.parametrize("arch, kv_heads", ARCHS, ids=[a for a, _ in ARCHS])
def test_init_writes_a_checkpoint_plain_transformers_loads(tmp_path, arch, kv_heads):
    out = init_model(arch, tmp_path / arch, num_key_value_heads=kv_heads, **SMALL)
    files = sorted(p.name for p in out.iterdir())
    assert "config.json" in files and "model.safetensors" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth"))]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == arch
    assert model.config.num_key_value_heads == kv_heads
    assert model.config.rope_parameters["rope_theta"] == 5e5
    # Same seed, same weights: init is deterministic.
    again = init_model(arch, tmp_path / f"{arch}-again", num_key_value_heads=kv_heads, **SMALL)
    other = AutoModelForCausalLM.from_pretrained(again)
    for (name, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), name


def test_init_with_tokenizer_and_load_with_prolong_attention(tmp_path, tokenizer_dir):
    out = init_model("llama", tmp_path / "m", num_key_value_heads=2, tokenizer_dir=tokenizer_dir, **SMALL)
    tokenizer = load_tokenizer(out)
    assert (
        tokenizer("the long model")["input_ids"]
        == load_tokenizer(tokenizer_dir)("the long model")["input_ids"]
    )
    model = load_model(out, dtype="bfloat16")
    assert model.config._attn_implementation == "prolong"
    assert model.dtype == torch.bfloat16
    assert model.config.eos_token_id == tokenizer.eos_token_id
    forced = load_model(out, attn_implementation="sdpa_per_doc")
    assert forced.config._attn_implementation == "prolong_per_doc"


def test_save_replaces_atomically(tmp_path):
    out = init_model("qwen2", tmp_path / "m", num_key_value_heads=2, **SMALL)
    model = load_model(out)
    with torch.no_grad():
        model.lm_head.weight.fill_(0.5)
    save_model(model, None, out)
    assert torch.all(load_model(out).lm_head.weight == 0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary directories left behind


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        load_model(tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown architecture 'gpt2'"):
        init_model("gpt2", tmp_path / "x", num_key_value_heads=2, **SMALL)
    with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
        init_model("llama", tmp_path / "x", num_key_value_heads=3, **SMALL)
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model(init_model("llama", tmp_path / "y", num_key_value_heads=2, **SMALL), dtype="int3")


def test_init_command_prints_summary(tmp_path, capsys, tokenizer_dir):
    commands.init(str(tmp_path / "cli"), architecture="mistral", vocab_size=64, tokenizer=str(tokenizer_dir))
    line = capsys.readouterr().out.strip()
    assert line.startswith("initialised mistral model with ") and str(tmp_path / "cli") in line
    assert commands.init.__doc__.splitlines()[0].startswith("Write a randomly initialised model")
