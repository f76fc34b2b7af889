"""`prolong eval RECIPE_OR_MODEL`: settings come from a recipe's eval block (or EvalSpec's defaults for a
model directory), flags override single fields, the model is the export of the last finished stage, and
the resolved settings (engine included) are saved beside the results."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from prolong.cli import build_parser
from prolong.config import EvalSpec, RecipeError, load_recipe, resolve_recipe_path
from prolong.errors import UserError
from prolong.eval import commands
from prolong.eval.engine import resolve_engine
from prolong.eval.runner import SPEC_FILE
from prolong.eval.tasks import CATEGORIES, resolve_tasks

CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what auto resolves to without a GPU")


def test_eval_command_arguments() -> None:
    parser = build_parser("eval", commands.eval)
    args = parser.parse_args(["/m", "--tasks", "recall,rag_nq", "--lengths", "8k,16384", "--no-chat", "--short"])
    assert args.recipe_or_model == "/m" and args.tasks == "recall,rag_nq" and args.chat is False and args.short
    plain = parser.parse_args(["/m"])
    assert plain.chat is None and plain.lengths is None  # not given: the recipe's or EvalSpec's value stays
    assert "Long-context evaluation" in parser.description


def test_every_flag_is_a_field_of_the_spec() -> None:
    """One set of names: the flags that override settings are EvalSpec's fields (every one but the hook's)."""
    not_settings = {"recipe_or_model", "stage", "model", "out_dir", "short", "trust_remote_code", "tasks_dir"}
    flags = set(inspect.signature(commands.eval).parameters) - not_settings
    assert flags | {"short_tasks_dir"} == set(EvalSpec.model_fields) - {"every_n_steps"}


def test_task_and_length_resolution() -> None:
    assert EvalSpec(lengths=["8k", 4096, "8192"]).lengths == [4096, 8192]  # parse_count, sorted, unique
    assert resolve_tasks("recall") == ["json_kv", "ruler_niah_mk_2", "ruler_niah_mk_3", "ruler_niah_mv"]
    assert resolve_tasks("niah_multikey_3,ruler_niah_mk_3,vt") == ["ruler_niah_mk_3", "ruler_vt"]
    assert set(resolve_tasks("synthetic")) == set(CATEGORIES["synthetic"]) and len(CATEGORIES["icl"]) == 5


def _saved_spec(out: Path) -> dict:
    return yaml.safe_load((out / SPEC_FILE).read_text())["eval"]


def test_model_directory_gets_spec_defaults_and_flags_override(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    commands.eval(str(model_dir), tasks="json_kv", lengths="1K", num_examples=1, chat=False, dtype="float32",
                  out_dir=str(out))
    saved = _saved_spec(out)
    defaults = EvalSpec().model_dump(mode="json")
    overridden = {"tasks": ["json_kv"], "lengths": [1024], "num_examples": 1, "chat": False, "dtype": "float32"}
    assert saved == {**defaults, **overridden, "engine": "hf"}  # engine resolved, the rest untouched
    result = json.loads((out / "json_kv_1024.json").read_text())
    assert result["args"]["engine"] == "hf" and result["args"]["seed"] == 42 and len(result["rows"]) == 1


@pytest.fixture
def recipe_run(tmp_path: Path, model_dir: Path) -> tuple[Path, list[str]]:
    """tiny-smoke in a fresh run directory whose first two stages have exports (copies of the tiny model)."""
    data = yaml.safe_load(resolve_recipe_path("tiny-smoke").read_text())
    data["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(data))
    stages = [s.name for s in load_recipe(path).stages]
    for name in stages[:2]:
        shutil.copytree(model_dir, tmp_path / "run" / name / "export")
    return path, stages


def test_recipe_eval_block_and_last_finished_stage(recipe_run: tuple[Path, list[str]], tmp_path: Path) -> None:
    path, stages = recipe_run
    recipe = load_recipe(path)
    out = tmp_path / "out"
    commands.eval(str(path), lengths="1K", chat=False, out_dir=str(out))
    saved = _saved_spec(out)
    assert saved["tasks"] == recipe.eval.tasks and saved["num_examples"] == recipe.eval.num_examples
    assert saved["seed"] == recipe.seed == 7  # eval.seed defaults to the recipe's seed
    assert saved["lengths"] == [1024] and saved["engine"] == "hf"
    result = json.loads((out / "ruler_niah_s_1_1024.json").read_text())
    assert result["args"]["model_dir"] == str(tmp_path / "run" / stages[1] / "export")

    first = tmp_path / "first"
    commands.eval(str(path), stage=stages[0], lengths="1K", chat=False, out_dir=str(first))
    result = json.loads((first / "ruler_niah_s_1_1024.json").read_text())
    assert result["args"]["model_dir"] == str(tmp_path / "run" / stages[0] / "export")


def test_recipe_model_choice_errors(recipe_run: tuple[Path, list[str]], model_dir: Path, tmp_path: Path) -> None:
    path, stages = recipe_run
    with pytest.raises(UserError, match=f"stage '{stages[-1]}' .* has no export yet"):
        commands.eval(str(path), stage=stages[-1])
    with pytest.raises(RecipeError, match="no stage 'nope'"):
        commands.eval(str(path), stage="nope")
    with pytest.raises(UserError, match="--stage or --model, not both"):
        commands.eval(str(path), stage=stages[0], model=str(model_dir))
    with pytest.raises(UserError, match="already a model directory"):
        commands.eval(str(model_dir), stage=stages[0])
    for name in stages[:2]:
        shutil.rmtree(tmp_path / "run" / name)
    with pytest.raises(UserError, match="no stage of recipe 'tiny-smoke' is finished yet"):
        commands.eval(str(path))
    with pytest.raises(UserError, match="not a model directory, a recipe file or a shipped recipe"):
        commands.eval(str(tmp_path / "missing"))


def test_bad_flag_values_name_the_field(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="lengths.0: .*token count"):
        commands.eval(str(model_dir), lengths="8x", out_dir=str(tmp_path))
    with pytest.raises(RecipeError, match="depths.1: .*less than or equal to 1"):
        commands.eval(str(model_dir), depths="0.5,1.5", out_dir=str(tmp_path))
    with pytest.raises(RecipeError, match="engine: .*'auto', 'hf' or 'vllm'"):
        commands.eval(str(model_dir), engine="fast", out_dir=str(tmp_path))
    assert not list(tmp_path.iterdir())


@CPU_ONLY
def test_engine_auto_is_hf_here_and_forced_vllm_is_refused(model_dir: Path, tmp_path: Path) -> None:
    assert resolve_engine("auto") == "hf" and resolve_engine("hf") == "hf"
    with pytest.raises(UserError, match="eval.engine: vllm needs the vllm package .* and a CUDA GPU"):
        commands.eval(str(model_dir), engine="vllm", lengths="1K", out_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # refused before anything was loaded or written
