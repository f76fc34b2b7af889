"""`prolong ablate`: each paired run changes exactly one thing of the demo's first long stage."""

from __future__ import annotations

from pathlib import Path

import pytest

from prolong.ablate import ABLATIONS, variant_recipe, with_long_share
from prolong.config import load_recipe, save_recipe
from prolong.errors import UserError


@pytest.fixture(scope="module")
def run():
    return load_recipe("tiny-demo", output_dir="/tmp/run")


def _first_long(run):
    """The demo's first long stage (it starts from base-512, not from the passkey-tuned instruct-512)."""
    return run.stage("stage1-4k")


def _differences(a, b) -> set[str]:
    return {k for k, v in a.model_dump().items() if b.model_dump()[k] != v}


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_each_run_changes_one_thing_of_the_reference(run, name: str, tmp_path: Path) -> None:
    root = Path(run.output_dir)
    reference = variant_recipe(run, root, ABLATIONS["reference"], None, 4).stages[0]
    spec = variant_recipe(run, root, ABLATIONS[name], None, 4)
    stage = spec.stages[0]
    expected = {"reference": set(), "rope-kept": {"rope"}, "cross-document": {"attention"},
                "long-100": {"mixture"}, "long-30": {"mixture"}}[name]
    assert _differences(stage, reference) - {"name"} == expected
    assert stage.init_from == str(root / "base-512") and not stage.carry_optimizer_state
    assert spec.seed == run.seed and spec.tokenizer.path == str(root / "tokenizer")
    assert spec.data == run.data  # same shards and tokenized cache
    assert spec.stages[1:] == [run.stage("instruct-16k")]  # then the demo's own SFT, unchanged
    assert all(n > run.stages[0].seq_len for n in spec.eval.lengths) and spec.eval.num_examples == 4
    assert variant_recipe(run, root, ABLATIONS[name], None, None).eval.num_examples == run.eval.num_examples
    # runs with the reference's mixture share its shards; the others get their own stage name
    assert (stage.name == reference.name) == (stage.mixture == reference.mixture)
    save_recipe(spec, tmp_path / "recipe.yaml")
    load_recipe(tmp_path / "recipe.yaml")  # a valid recipe


def test_runs_start_where_the_demo_s_first_long_stage_starts(run) -> None:
    from prolong.ablate import first_long_stage

    assert [s.name for s in first_long_stage(load_recipe("tiny-demo"))] == ["base-512", "stage1-4k"]
    assert [s.name for s in first_long_stage(load_recipe("tiny-smoke"))] == ["base-128", "stage1-512"]
    with pytest.raises(UserError, match="ablations need a base stage"):
        first_long_stage(run.model_copy(update={"stages": run.stages[:2]}))  # no long stage


@pytest.mark.parametrize("share", [1.0, 0.3, 0.6])
def test_long_share_rescales_long_and_short_entries(run, share: float) -> None:
    stage = _first_long(run)
    long_domains = frozenset(d.name for d in run.data.domains if d.kind == "long")
    changed = with_long_share(stage, long_domains, share)
    long_part = sum(e.proportion for e in changed.mixture if e.domain in long_domains)
    assert long_part == pytest.approx(share) and sum(e.proportion for e in changed.mixture) == pytest.approx(1)
    before = {e.domain: e.proportion for e in stage.mixture if e.domain in long_domains}
    after = {e.domain: e.proportion for e in changed.mixture if e.domain in long_domains}
    ratios = {d: after[d] / before[d] for d in before}
    assert max(ratios.values()) == pytest.approx(min(ratios.values()))  # proportions within long kept


def test_long_share_needs_long_and_short_data(run) -> None:
    only_long = _first_long(run).model_copy(update={"mixture": [e.model_copy(update={"proportion": 0.5})
                                                             for e in _first_long(run).mixture[:2]]})
    with pytest.raises(UserError, match="both long and short"):
        with_long_share(only_long, frozenset({"code_repos", "books"}), 0.3)


def test_ablate_refuses_a_directory_without_a_demo_run(tmp_path: Path) -> None:
    from prolong.ablate import ablate

    with pytest.raises(UserError, match="no demo run"):
        ablate(str(tmp_path))


@pytest.mark.slow
def test_ablate_runs_paired_stages_from_a_demo_base_and_writes_the_table(tmp_path: Path) -> None:
    """tiny-smoke's base, then the reference and one ablation of one step each: the table and plot exist,
    the variant really trained with the base's RoPE (theta kept) and the reference with the raised one."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "smoke"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    demo = [sys.executable, "-m", "prolong", "demo", "--recipe", "tiny-smoke", "--out-dir", str(out),
            "--corpus-mb", "3"]
    subprocess.run(demo, check=True, capture_output=True, text=True, timeout=600, env=env)
    ablate = [sys.executable, "-m", "prolong", "ablate", "--run-dir", str(out), "--steps", "1", "--examples", "2",
              "--only", "rope-kept"]
    result = subprocess.run(ablate, check=False, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = (out / "ablate" / "ablation.md").read_text()
    for row in ("| base (no extension) |", "| reference |", "| rope-kept |"):
        assert row in table
    assert "), 2 examples each;" in table  # the tie margin counts the prompts --examples asked for
    assert (out / "ablate" / "ablation.png").stat().st_size > 10_000
    thetas = {}
    for name in ("reference", "rope-kept"):
        export = next((out / "ablate" / name).glob("ablate-*/export/config.json"))
        config = json.loads(export.read_text())
        thetas[name] = config.get("rope_theta") or config["rope_parameters"]["rope_theta"]
    assert thetas == {"reference": 1.0e5, "rope-kept": 1.0e4}
