"""Dry runs: exact shortcuts, hand arithmetic, host memory, the model config, refusals naming the key."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from prolong.cli import main
from prolong.config import RecipeError, load_recipe, recipe_from_dict
from prolong.errors import UserError
from prolong.plan.dry_run import dry_run
from prolong.plan.measure import VALIDATION_CASES, validation_recipe
from prolong.plan.model_config import CONFIGS_DIR, plan_model, shipped_configs
from prolong.plan.report import Capacity, fits, parse_memory, verdict

ACCUMULATING = next(c for c in VALIDATION_CASES if c.accumulate)


def _plan(recipe, world: int = 2, **kwargs):
    return dry_run(recipe, recipe.stages[0], world, plan_model(recipe).config, target="cpu", **kwargs)


def test_last_micro_batch_alone_equals_two_micro_batches() -> None:
    """The dry run runs only the last micro-batch of an accumulated step, on the warm-up's gradients
    (module docstring of prolong.plan.dry_run); that is exactly the peak of running two."""
    recipe = validation_recipe(ACCUMULATING)
    assert _plan(recipe).memory.peak == _plan(recipe, micro_batches=2).memory.peak


def test_persistent_categories_match_hand_arithmetic() -> None:
    """float32 master weights sharded over the world; AdamW: two float32 tensors per sharded parameter
    plus a float32 step per parameter tensor (everything divides evenly at world size 2)."""
    recipe = validation_recipe(ACCUMULATING)
    run = _plan(recipe)
    config = plan_model(recipe).config
    hidden, inter, layers, vocab = 256, 688, 4, config.vocab_size
    kv = hidden // 4 * 2
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter + 2 * hidden
    params = layers * per_layer + 2 * vocab * hidden + hidden
    assert run.parameters == params
    tensors = layers * 9 + 3
    assert run.memory.tracker["Sharded Param"] == 4 * params // 2
    assert run.memory.optimizer_state == 2 * 4 * params // 2 + 4 * tensors
    assert run.memory.tracker["Sharded Grad"] <= 4 * params // 2  # accumulated gradients, sharded


def test_offloaded_activations_are_host_memory() -> None:
    """Tensors a policy moves to host memory are counted there (the plan's host device), not on the GPU."""
    case = dataclasses.replace(VALIDATION_CASES[0], seq_len=4096)
    plain = validation_recipe(case)
    offload = plain.model_copy(
        update={"training": plain.training.model_copy(update={"offload_activations": True})}
    )
    on_gpu, with_host = _plan(plain), _plan(offload)
    assert on_gpu.memory.host == 0 < with_host.memory.host
    assert with_host.memory.activations < on_gpu.memory.activations


def test_offloaded_parameters_and_optimizer_state_are_host_memory() -> None:
    """training.offload_parameters (FSDP2's CPUOffloadPolicy): the sharded float32 parameters, their
    gradients and AdamW's state count as host memory, byte for byte what the GPU held without it."""
    recipe = validation_recipe(ACCUMULATING)
    offload = recipe.model_copy(
        update={"training": recipe.training.model_copy(update={"offload_parameters": True})}
    )
    on_gpu, on_host = _plan(recipe), _plan(offload)
    assert "parameter offload on" in on_host.activation_policy
    for kind in ("Sharded Param", "Sharded Grad", "OptState"):
        assert on_host.memory.tracker[kind] == 0 < on_gpu.memory.tracker[kind]
    assert on_host.memory.optimizer_state == 0
    host = on_host.memory.host_categories
    assert host["parameters"] == on_gpu.memory.tracker["Sharded Param"]
    assert host["optimizer_state"] == on_gpu.memory.optimizer_state
    assert 0 < host["gradients"] <= on_gpu.memory.tracker["Sharded Param"]  # float32, sharded
    assert on_host.memory.host == sum(host.values())
    # the device keeps what the step computes with: its peak drops by at least the state it held then
    held = on_gpu.memory.tracker["Sharded Param"] + on_gpu.memory.optimizer_state
    assert on_host.memory.peak <= on_gpu.memory.peak - held
    assert any("parameter offload: not counted" in note for note in on_host.notes)


def test_stage_that_cannot_run_names_the_recipe_key() -> None:
    recipe = load_recipe("prolong-8b")
    stage2 = recipe.stage("stage2-512k")
    config = plan_model(recipe).config
    with pytest.raises(RecipeError, match="stage2-512k.*does not divide the world size 12"):
        dry_run(recipe, stage2, 12, config)
    with pytest.raises(RecipeError, match="cannot be split evenly over 128 data-parallel ranks"):
        dry_run(recipe, recipe.stage("stage1-64k"), 128, config)
    odd = stage2.model_copy(update={"sequence_parallel": 12, "tokens_per_step": 512 * 1024 * 2})
    recipe = recipe.model_copy(update={"stages": [recipe.stages[0], odd]})
    with pytest.raises(UserError, match=r"stages\.1 \('stage2-512k'\).*32 attention heads"):
        dry_run(recipe, odd, 24, config)


def test_model_config_sources(tmp_path: Path) -> None:
    assert shipped_configs() == ["llama-3-8b", "llama-3.1-8b", "qwen2.5-7b"]
    base = load_recipe("ultralong-8b").model_dump(mode="json")
    assert plan_model(load_recipe("ultralong-8b")).source == "shipped config llama-3.1-8b"
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text((CONFIGS_DIR / "qwen2.5-7b" / "config.json").read_text())
    own = recipe_from_dict({**base, "model": {"path": str(checkpoint), "config": "llama-3-8b"}})
    assert plan_model(own).config.model_type == "qwen2"  # the checkpoint's own config.json wins
    missing = recipe_from_dict({**base, "model": {"path": str(tmp_path / "absent")}})
    with pytest.raises(UserError, match="model.config"):
        plan_model(missing)
    unknown = recipe_from_dict({**base, "model": {"path": str(tmp_path / "absent"), "config": "llama-9"}})
    with pytest.raises(UserError, match="model.config: 'llama-9'"):
        plan_model(unknown)


def test_capacity_and_verdict() -> None:
    assert parse_memory("80GiB") == 80 * 2**30 and parse_memory("141GB") == 141 * 10**9
    assert parse_memory("24") == 24 * 2**30
    with pytest.raises(UserError, match="--gpu-memory"):
        parse_memory("lots")
    run = _plan(validation_recipe(VALIDATION_CASES[0]))
    roomy, tight = Capacity(2**30), Capacity(run.memory.peak, reserve=0.5)
    assert fits(run, roomy) and verdict(run, roomy).startswith("fits: needs")
    assert not fits(run, tight) and verdict(run, tight).startswith("does not fit: needs")


def test_cli_json_and_exit_status(tmp_path: Path, capsys) -> None:
    recipe = validation_recipe(VALIDATION_CASES[0])
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    assert main(["plan", str(path), "--world-size", "2", "--target", "cpu", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    stage = plan["stages"][0]
    assert stage["fits"] and stage["world_size"] == 2 and stage["memory"]["peak"] > 0
    assert (
        sum(
            stage["memory"][k]
            for k in (
                "parameters",
                "gradients",
                "optimizer_state",
                "activations",
                "temporaries",
                "communication",
            )
        )
        == stage["memory"]["peak"]
    )
    assert main(["plan", str(path), "--world-size", "2", "--target", "cpu", "--gpu-memory", "1MiB"]) == 1
    assert "does not fit: needs" in capsys.readouterr().out
