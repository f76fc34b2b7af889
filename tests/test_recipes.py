"""Recipe schema, shipped recipes and the numbers derived from them (checked against the paper)."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prolong.config import (
    RECIPES_DIR,
    RecipeError,
    derived_numbers,
    load_recipe,
    parse_count,
    recipe_from_dict,
)

SHIPPED = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def test_every_paper_recipe_ships():
    assert [s.name for s in load_recipe("prolong-8b").stages] == ["stage1-64k", "stage2-512k", "sft"]
    assert [s.name for s in load_recipe("ultralong-8b").stages] == [
        "extend-1m", "sft-1m", "extend-2m", "sft-2m", "extend-4m", "sft-4m"
    ]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipe_loads_and_mixtures_sum_to_one(name):
    recipe = load_recipe(name)
    for stage in recipe.stages:
        assert math.isclose(sum(e.proportion for e in stage.mixture), 1.0, abs_tol=1e-6)


def test_base_stage_is_the_last_stage_before_the_first_longer_one():
    assert load_recipe("tiny-demo").base_stage().name == "instruct-512"  # base-512, then its short SFT
    assert load_recipe("tiny-smoke").base_stage().name == "base-128"  # the next stage is longer


def test_parse_count_uses_binary_units():
    assert parse_count("64K") == 65536
    assert parse_count("4M") == 4 * 2**20
    assert parse_count("1.5K") == 1536
    with pytest.raises(ValueError, match="token count"):
        parse_count("64 kilo")


def test_stage1_matches_paper():
    recipe = load_recipe("prolong-8b")
    stage = recipe.stage("stage1-64k")
    (row,) = derived_numbers(recipe, world_size=64, stages=[stage])
    assert row["steps"] == 5000
    assert row["tokens_per_step"] == 4 * 2**20
    assert row["sequences_per_step"] == 64  # 64 x 64K
    assert row["grad_accumulation"] == 1
    assert row["warmup_steps"] == 500
    assert 19.5e9 < row["tokens"] < 21.5e9  # "20B tokens"
    assert stage.rope.theta == 8e6 and stage.lr == 1e-5 and stage.min_lr == 1e-6
    shares = {e.domain: e.proportion for e in stage.mixture}
    assert shares["code_repos"] == 0.30 and shares["books"] == 0.30 and shares["textbooks"] == 0.03
    short = sum(v for k, v in shares.items() if recipe.domain(k).kind == "short")
    assert math.isclose(short, 0.37, abs_tol=1e-9)
    assert math.isclose(shares["fineweb_edu"] / short, 0.27, abs_tol=1e-3)
    assert math.isclose(shares["wikipedia"] / short, 0.08, abs_tol=1e-3)
    # with 8 GPUs the same step is 8 accumulation micro-batches per rank
    assert derived_numbers(recipe, world_size=8, stages=[stage])[0]["grad_accumulation"] == 8


def test_stage2_length_curriculum_matches_paper():
    recipe = load_recipe("prolong-8b")
    stage = recipe.stage("stage2-512k")
    (row,) = derived_numbers(recipe, world_size=64, stages=[stage])
    assert row["steps"] == 2500 and row["sequences_per_step"] == 16 and row["data_parallel"] == 8
    assert stage.rope.theta == 1.28e8 and stage.carry_optimizer_state and stage.sequence_parallel == 8
    assert stage.init_from == "previous"

    def share(domain, doc_len):
        return sum(e.proportion for e in stage.mixture if e.domain == domain and (e.doc_len or stage.seq_len) == doc_len)

    code = share("code_repos", 2**19) + share("code_repos", 2**16)
    books = share("books", 2**19) + share("books", 2**16)
    assert math.isclose(share("code_repos", 2**19) / code, 0.5)
    assert math.isclose(share("books", 2**19) / books, 0.17, abs_tol=1e-9)
    assert share("textbooks", 2**19) == 0.03
    short = sum(e.proportion for e in stage.mixture if recipe.domain(e.domain).kind == "short")
    assert math.isclose(short, 0.37, abs_tol=1e-9)


def test_sft_matches_paper():
    recipe = load_recipe("prolong-8b")
    stage = recipe.stage("sft")
    (row,) = derived_numbers(recipe, world_size=64, stages=[stage])
    assert stage.kind == "sft" and row["steps"] == 250 and stage.lr == 2e-5 and stage.min_lr == 2e-6
    assert stage.warmup_ratio == 0.05 and 1.0e9 < row["tokens"] < 1.1e9


def test_ultralong_uses_yarn_with_cross_document_attention():
    recipe = load_recipe("ultralong-8b")
    for target, factor, sp in [("1m", 128, 8), ("2m", 256, 16), ("4m", 512, 32)]:
        stage = recipe.stage(f"extend-{target}")
        assert stage.init_from == "model" and stage.sequence_parallel == sp
        assert recipe.stage(f"sft-{target}").init_from == f"extend-{target}"
        (row,) = derived_numbers(recipe, world_size=sp, stages=[stage])  # fits its own GPU count
        assert row["data_parallel"] == 1
        assert stage.rope.yarn.factor == factor
        assert stage.rope.yarn.factor * stage.rope.yarn.original_max_position_embeddings == stage.seq_len
        assert stage.attention == "cross_document"
        assert 0.9e9 < stage.num_tokens < 1.4e9  # about 1B tokens


def _raw(name: str) -> dict:
    return yaml.safe_load((RECIPES_DIR / f"{name}.yaml").read_text())


def test_typo_key_is_an_error_naming_the_key():
    data = _raw("prolong-8b")
    data["stages"][0]["warmup_ration"] = 0.1
    with pytest.raises(RecipeError, match=r"stages\.0\.warmup_ration: unknown key"):
        recipe_from_dict(data)


def test_bad_value_names_path_value_and_allowed():
    data = _raw("prolong-8b")
    data["stages"][0]["attention"] = "docs"
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(data)
    message = str(info.value)
    assert "stages.0.attention" in message and "'docs'" in message and "cross_document" in message


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["stages"][0]["mixture"][0].update(proportion=0.5), "sum to 1"),
        (lambda d: d["stages"][0]["mixture"][0].update(domain="kode"), "unknown domain 'kode'"),
        (lambda d: d["stages"][0].update(tokens_per_step=1000), "multiple of seq_len"),
        (lambda d: d["stages"][0].update(total_tokens="1B"), "exactly one of 'steps' or 'total_tokens'"),
        (lambda d: d["stages"][0].update(rope={"theta": 1e6, "yarn": {"factor": 2, "original_max_position_embeddings": 8192}}), "exactly one of 'theta' or 'yarn'"),
        (lambda d: d["model"].update(init={"architecture": "llama"}), "exactly one of 'path'"),
    ],
)
def test_inconsistent_recipes_are_refused(mutate, expected):
    data = copy.deepcopy(_raw("prolong-8b"))
    mutate(data)
    with pytest.raises(RecipeError, match=expected):
        recipe_from_dict(data)


def test_world_size_that_cannot_split_a_step_is_refused():
    recipe = load_recipe("prolong-8b")
    stage2 = [recipe.stage("stage2-512k")]
    with pytest.raises(RecipeError, match="sequence_parallel=8 does not divide the world size 12"):
        derived_numbers(recipe, world_size=12, stages=stage2)
    with pytest.raises(RecipeError, match="cannot be split evenly"):
        derived_numbers(recipe, world_size=8 * 32, stages=stage2)  # 32 DP ranks for 16 sequences


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prolong", *args], check=False, capture_output=True, text=True, timeout=120)


def test_cli_validate_accepts_shipped_and_rejects_typo(tmp_path: Path):
    ok = _cli("recipe", "validate", "--no-check-paths", *SHIPPED)  # templates: their checkpoints are yours
    assert ok.returncode == 0, ok.stdout + ok.stderr
    data = _raw("prolong-8b")
    data["optimizer"]["weight_decey"] = 0.1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = _cli("recipe", "validate", str(bad))
    assert result.returncode == 2
    assert "optimizer.weight_decey: unknown key" in result.stdout


def test_cli_show_prints_paper_numbers():
    result = _cli("recipe", "show", "prolong-8b", "--world-size", "64")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith("stage1-64k"))
    assert line.split()[1:5] == ["64K", "5,000", "4M", "64"]


def test_output_dir_placeholder_and_override():
    data = _raw("prolong-8b")
    data["data"]["domains"][-1]["sources"][0]["path"] = "{output_dir}/corpus/chat.jsonl"
    recipe = recipe_from_dict(data, output_dir="/tmp/run7")
    assert recipe.output_dir == "/tmp/run7"
    assert recipe.data.domains[-1].sources[0].path == "/tmp/run7/corpus/chat.jsonl"


def test_stage_selection_and_init_from_references():
    recipe = load_recipe("ultralong-8b")
    assert [s.name for s in recipe.select_stages("sft-1m,extend-1m")] == ["extend-1m", "sft-1m"]
    with pytest.raises(RecipeError, match="no stage 'extend-8m'"):
        recipe.select_stages("extend-8m")
    data = copy.deepcopy(_raw("ultralong-8b"))
    data["stages"][0]["init_from"] = "sft-1m"  # a later stage
    with pytest.raises(RecipeError, match="does not come before"):
        recipe_from_dict(data)
    data = copy.deepcopy(_raw("ultralong-8b"))
    data["stages"][2]["carry_optimizer_state"] = True  # extend-2m starts from the model
    with pytest.raises(RecipeError, match="starts from the recipe's model"):
        recipe_from_dict(data)


def test_yaml_merge_keys_share_stage_settings():
    """The 2M/4M stages inherit everything the recipe does not override from the 1M ones."""
    recipe = load_recipe("ultralong-8b")
    one, four = recipe.stage("extend-1m"), recipe.stage("extend-4m")
    assert (four.lr, four.min_lr, four.attention, four.tokens_per_step) == (one.lr, one.min_lr, one.attention, one.tokens_per_step)
    assert four.steps == 150 and one.steps == 128
    assert recipe.stage("sft-4m").model_dump(exclude={"name", "init_from"}) == recipe.stage("sft-1m").model_dump(
        exclude={"name", "init_from"}
    )


@pytest.mark.parametrize(
    ("former", "recipe", "stage"),
    [("prolong-8b-64k", "prolong-8b", "stage1-64k"), ("prolong-8b-sft", "prolong-8b", "sft"),
     ("ultralong-8b-4m", "ultralong-8b", "extend-4m")],
)
def test_former_recipe_names_point_to_their_stage(former: str, recipe: str, stage: str) -> None:
    with pytest.raises(RecipeError, match=f"{former} is now the stage '{stage}' of the shipped recipe '{recipe}'"):
        load_recipe(former)
    assert stage in [s.name for s in load_recipe(recipe).stages]  # the name it points to exists
