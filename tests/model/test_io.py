"""init / save / load through the same from_pretrained path as a real checkpoint; safetensors only."""

from __future__ import annotations

import pytest
import torch
from model_helpers import ARCHS
from transformers import AutoModelForCausalLM

from prolong.config import RecipeError, TinyModel
from prolong.errors import UserError
from prolong.model import commands
from prolong.model.io import init_model, load_model, load_tokenizer, save_model

SMALL = {"vocab_size": 64, "seed": 3}


def tiny(architecture: str, num_key_value_heads: int) -> TinyModel:
    return TinyModel(architecture=architecture, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=4, num_key_value_heads=num_key_value_heads,
                     max_position_embeddings=2048, rope_theta=5e5)


@pytest.mark.parametrize("arch, kv_heads", ARCHS, ids=[a for a, _ in ARCHS])
def test_init_writes_a_checkpoint_plain_transformers_loads(tmp_path, arch, kv_heads):
    out = init_model(tiny(arch, kv_heads), tmp_path / arch, **SMALL)
    files = sorted(p.name for p in out.iterdir())
    assert "config.json" in files and "model.safetensors" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth"))]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == arch
    assert model.config.num_key_value_heads == kv_heads
    assert model.config.rope_parameters["rope_theta"] == 5e5
    # Same seed, same weights: init is deterministic.
    again = init_model(tiny(arch, kv_heads), tmp_path / f"{arch}-again", **SMALL)
    other = AutoModelForCausalLM.from_pretrained(again)
    for (name, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_init_with_tokenizer_and_load_with_prolong_attention(tmp_path, tokenizer_dir):
    out = init_model(tiny("llama", 2), tmp_path / "m", seed=3, tokenizer_dir=tokenizer_dir)
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
    out = init_model(tiny("qwen2", 2), tmp_path / "m", **SMALL)
    model = load_model(out)
    with torch.no_grad():
        model.lm_head.weight.fill_(0.5)
    save_model(model, None, out)
    assert torch.all(load_model(out).lm_head.weight == 0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary directories left behind


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        load_model(tmp_path / "missing")
    with pytest.raises(ValueError, match="give vocab_size or a tokenizer"):
        init_model(tiny("llama", 2), tmp_path / "x", seed=0)
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model(init_model(tiny("llama", 2), tmp_path / "y", **SMALL), dtype="int3")


def test_init_command_prints_summary(tmp_path, capsys, tokenizer_dir):
    commands.init(str(tmp_path / "cli"), architecture="mistral", vocab_size=64, tokenizer=str(tokenizer_dir))
    line = capsys.readouterr().out.strip()
    assert line.startswith("initialised mistral model with ") and str(tmp_path / "cli") in line
    assert commands.init.__doc__.splitlines()[0].startswith("Write a randomly initialised model")


def test_init_command_has_the_recipe_fields_and_defaults(tmp_path, tokenizer_dir):
    """`prolong model init` flags are TinyModel's fields with TinyModel's defaults (one set of defaults)."""
    import inspect

    params = inspect.signature(commands.init).parameters
    shape = {name: p.default for name, p in params.items() if name not in ("out_dir", "vocab_size", "tokenizer", "seed")}
    assert shape == TinyModel().model_dump()
    commands.init(str(tmp_path / "d"), tokenizer=str(tokenizer_dir))
    config = AutoModelForCausalLM.from_pretrained(tmp_path / "d").config
    defaults = TinyModel()
    assert (config.hidden_size, config.intermediate_size, config.max_position_embeddings) == (
        defaults.hidden_size, defaults.intermediate_size, defaults.max_position_embeddings)
    assert config.rope_parameters["rope_theta"] == defaults.rope_theta
    tokens = len(load_tokenizer(tokenizer_dir))
    assert config.vocab_size % 64 == 0 and tokens <= config.vocab_size < tokens + 64


def test_init_command_refuses_bad_shapes(tmp_path):
    with pytest.raises(RecipeError, match="num_key_value_heads"):
        commands.init(str(tmp_path / "x"), vocab_size=64, num_key_value_heads=3)
    with pytest.raises(RecipeError, match="architecture"):
        commands.init(str(tmp_path / "x"), vocab_size=64, architecture="gpt2")
    with pytest.raises(UserError, match="--vocab-size or --tokenizer"):
        commands.init(str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
