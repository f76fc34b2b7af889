"""Whole runs through `prolong train` in subprocesses: stage handoff and exports, exact resume after
SIGKILL, a checkpoint write interrupted part way, and the checks made before anything starts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tiny_run import tiny_recipe, write_corpora, write_recipe

from prolong.config import recipe_from_dict
from prolong.errors import UserError
from prolong.train.checkpoint import latest_checkpoint
from prolong.train.metrics import read_metrics
from prolong.train.stages import validate_run

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def prolong(*args: str, timeout: int = 300) -> None:
    command = [sys.executable, "-m", "prolong", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=timeout, check=False)
    if result.returncode:
        pytest.fail(
            f"prolong {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )


def losses(stage_dir: Path) -> dict[int, float]:
    """Loss per step; a resumed run's repeated steps keep their latest record."""
    return {r["step"]: r["loss"] for r in read_metrics(stage_dir / "metrics.jsonl")}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Data built once, then all three stages uninterrupted in one process."""
    root = tmp_path_factory.mktemp("tiny")
    corpora = write_corpora(root / "raw")
    recipe = tiny_recipe(corpora, root / "run", root / "data", {"train_vocab_size": 300})
    path = write_recipe(recipe, root / "tiny.yaml")
    prolong("data", "build", str(path))
    prolong("train", str(path))
    return {"root": root, "recipe": recipe, "path": path, "corpora": corpora}


def _second_run(full_run: dict, name: str) -> tuple[dict, Path]:
    """Same data and tokenizer, another output directory."""
    root = full_run["root"]
    tokenizer = {"path": str(root / "run" / "tokenizer")}
    recipe = tiny_recipe(full_run["corpora"], root / name, root / "data", tokenizer)
    return recipe, write_recipe(recipe, root / f"{name}.yaml")


def test_stages_hand_over_and_export_plain_transformers(full_run: dict) -> None:
    from transformers import AutoModelForCausalLM

    run = full_run["root"] / "run"
    for stage, theta, steps in (("stage1", 40000.0, 12), ("stage2", 160000.0, 4), ("sft", 160000.0, 3)):
        export = run / stage / "export"
        model = AutoModelForCausalLM.from_pretrained(export, attn_implementation="sdpa")
        assert model.config.rope_parameters["rope_theta"] == theta
        logits = model(torch.tensor([[1, 5, 7, 9]])).logits
        assert torch.isfinite(logits).all()
        assert sorted(losses(run / stage)) == list(range(1, steps + 1))
        assert (run / stage / "plots" / "loss.png").is_file() and (
            run / stage / "plots" / "throughput.png"
        ).is_file()
        saved = yaml.safe_load((run / stage / "recipe.yaml").read_text())
        assert saved["training"]["loss_kernel"] == "chunked"  # `auto` resolved on this CPU run, recorded
        kept = [p.name for p in (run / stage / "checkpoints").iterdir()]
        assert len(kept) <= 2 and f"step_{steps:08d}" in kept
    assert (
        AutoModelForCausalLM.from_pretrained(run / "stage2" / "export").config.max_position_embeddings == 256
    )
    record = json.loads((run / "stage1" / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "tflops_per_device", "peak_memory_gb", "eta_s"):
        assert key in record
    first = losses(run / "stage1")
    assert first[12] < first[1]  # it learns


def test_sigkill_mid_stage_then_resume_is_bitwise(full_run: dict) -> None:
    recipe, path = _second_run(full_run, "killed")
    stage_dir = Path(recipe["output_dir"]) / "stage1"
    process = subprocess.Popen(
        [sys.executable, "-m", "prolong", "train", str(path), "--stage", "stage1"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while max(losses(stage_dir), default=0) < 6:  # past the step-4 checkpoint, before the step-8 one
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    checkpoints = stage_dir / "checkpoints"
    assert latest_checkpoint(checkpoints).name == "step_00000004"
    assert not (stage_dir / "export").exists()

    # what a kill during the next checkpoint write leaves behind: a partial step_00000008.tmp
    partial = checkpoints / "step_00000008.tmp"
    shutil.copytree(checkpoints / "step_00000004", partial)
    (partial / "trainer_state.json").unlink()
    for shard in partial.glob("*.distcp"):
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    assert latest_checkpoint(checkpoints).name == "step_00000004"

    prolong("train", str(path), "--stage", "stage1", "--resume")
    expected = losses(full_run["root"] / "run" / "stage1")
    assert losses(stage_dir) == expected  # every step, bitwise (floats round-trip through JSON exactly)
    assert not partial.exists()


def test_refused_before_anything_starts(full_run: dict, tmp_path: Path) -> None:
    recipe = dict(full_run["recipe"], output_dir=str(tmp_path / "never"))
    recipe["stages"] = [dict(s) for s in recipe["stages"]]
    recipe["stages"][0]["sequence_parallel"] = 3
    with pytest.raises(Exception, match="sequence_parallel=3"):
        validate_run(recipe_from_dict(recipe), recipe_from_dict(recipe).stages, world_size=3)
    recipe["stages"][0]["sequence_parallel"] = 2
    with pytest.raises(Exception, match="does not divide the world size 3"):
        validate_run(recipe_from_dict(recipe), recipe_from_dict(recipe).stages, world_size=3)
    assert not (tmp_path / "never").exists()


def test_existing_run_is_not_overwritten_without_resume(full_run: dict) -> None:
    from prolong.train.commands import train

    with pytest.raises(UserError, match="--resume"):
        train(str(full_run["path"]), stage="stage1")


def test_non_finite_steps_are_skipped_then_the_run_stops(full_run: dict, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from prolong.train.commands import train
    from prolong.train.loop import TrainingStopped

    # a "finished stage" whose weights hold a NaN: every step's loss and gradient are non-finite
    poisoned = tmp_path / "poisoned"
    shutil.copytree(full_run["root"] / "run" / "stage1" / "export", poisoned / "export")
    weights_file = poisoned / "export" / "model.safetensors"
    weights = load_file(weights_file)
    name = next(k for k in weights if k.endswith("mlp.down_proj.weight"))
    weights[name][0, 0] = float("nan")
    save_file(weights, weights_file, metadata={"format": "pt"})
    recipe = dict(full_run["recipe"], output_dir=str(tmp_path / "out"))
    recipe["tokenizer"] = {"path": str(full_run["root"] / "run" / "tokenizer")}
    recipe["stages"] = [dict(recipe["stages"][1], init_from=str(poisoned), carry_optimizer_state=False)]
    path = write_recipe(recipe, tmp_path / "poisoned.yaml")

    with pytest.raises(TrainingStopped, match="3 steps in a row had a non-finite loss"):
        train(str(path))
    stage_dir = tmp_path / "out" / "stage2"
    assert latest_checkpoint(stage_dir / "checkpoints").name == "step_00000003"
    events = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum("skipped" in e.get("event", "") for e in events) == 3
    assert all(r["skipped"] for r in events if "loss" in r)
    assert not (stage_dir / "export").exists()


@pytest.mark.distributed
def test_torchrun_dp2_then_sp2_matches_one_process(full_run: dict) -> None:
    """The whole recipe under torchrun: stage1 with 2 data-parallel ranks, stage2 with SP=2, SFT with
    2 data-parallel ranks; per-step losses match the one-process run (same global batches)."""
    recipe, path = _second_run(full_run, "torchrun")
    recipe["stages"][1]["sequence_parallel"] = 2
    write_recipe(recipe, path)
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "prolong", "train", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-5000:]
    for stage in ("stage1", "stage2", "sft"):
        ours = losses(Path(recipe["output_dir"]) / stage)
        reference = losses(full_run["root"] / "run" / stage)
        assert ours.keys() == reference.keys()
        for step, loss in ours.items():
            assert loss == pytest.approx(reference[step], rel=1e-4), (stage, step)


def test_eval_every_n_steps_runs_the_suite_during_training(full_run: dict, tmp_path: Path) -> None:
    from prolong.train.commands import train

    recipe = dict(full_run["recipe"], output_dir=str(tmp_path / "out"))
    recipe["tokenizer"] = {"path": str(full_run["root"] / "run" / "tokenizer")}
    recipe["stages"] = [dict(recipe["stages"][0], steps=4)]
    recipe["eval"] = {"tasks": ["ruler_niah_s_1"], "lengths": [1024], "num_examples": 1, "every_n_steps": 2}
    train(str(write_recipe(recipe, tmp_path / "eval.yaml")))
    stage_dir = tmp_path / "out" / "stage1"
    events = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    evaluated = [e["step"] for e in events if "eval/ruler_niah_s_1@1024" in e]
    assert evaluated == [2, 4]
    assert (stage_dir / "eval" / "step_2" / "ruler_niah_s_1_1024.json").exists()
    ran = yaml.safe_load((stage_dir / "eval" / "step_2" / "eval_spec.yaml").read_text())["eval"]
    assert ran["engine"] == "hf" and ran["num_examples"] == 1 and ran["seed"] == 42  # the recipe's seed
