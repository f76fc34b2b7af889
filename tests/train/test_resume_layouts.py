"""Resuming at another world size or SP degree is a guarantee: 2 -> 1, 1 -> 2 and SP 2 -> SP 1 at equal
world size continue from the step-4 checkpoint with the uninterrupted one-process run's losses (float
tolerance: reductions run in another order) and the same data (token counts per step, exactly), and the
log says what changed. --resume-from picks the checkpoint; the newer one is moved aside."""

from __future__ import annotations

from pathlib import Path

import pytest
from ckpt_helpers import STEPS, interrupted_copy, records, run, stage1_recipe, train_command

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def sp2_run(ckpt_data: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """stage1 on 2 processes as one SP group of 2 (dp 1 x sp 2), uninterrupted."""
    out = tmp_path_factory.mktemp("sp2") / "run"
    run(train_command(stage1_recipe(ckpt_data, out, sequence_parallel=2), 2))
    return out


def _assert_continues_the_reference(stage_dir: Path, reference: dict) -> None:
    ours, theirs = records(stage_dir), reference["records"]
    assert sorted(ours) == list(range(5, STEPS + 1))
    for step, record in ours.items():
        assert (record["tokens"], record["valid_tokens"]) == (theirs[step]["tokens"], theirs[step]["valid_tokens"])
        assert record["loss"] == pytest.approx(theirs[step]["loss"], rel=1e-5, abs=1e-6), step


@pytest.fixture(scope="module")
def reference(ckpt_reference: dict) -> dict:
    return {**ckpt_reference, "records": records(ckpt_reference["out"] / "stage1")}


def test_uninterrupted_sp2_matches_one_process(sp2_run: Path, reference: dict) -> None:
    for step, record in records(sp2_run / "stage1").items():
        assert record["loss"] == pytest.approx(reference["records"][step]["loss"], rel=1e-5, abs=1e-6)


def test_world_2_sp_2_resumes_on_one_process(ckpt_data: dict, sp2_run: Path, reference: dict, tmp_path: Path) -> None:
    recipe = interrupted_copy(ckpt_data, sp2_run, tmp_path / "run")
    result = run(train_command(recipe, 1, "none", 0, "--resume-from", "4"))
    assert "world 2 (dp 1 x sp 2) -> world 1 (dp 1 x sp 1): same data order" in result.stdout
    _assert_continues_the_reference(tmp_path / "run" / "stage1", reference)
    aside = list((tmp_path / "run" / "stage1" / "checkpoints").glob("superseded-*/step_00000008"))
    assert len(aside) == 1 and "newer checkpoints moved aside" in result.stdout


def test_sp_2_resumes_as_sp_1_at_the_same_world_size(
    ckpt_data: dict, sp2_run: Path, reference: dict, tmp_path: Path
) -> None:
    recipe = interrupted_copy(ckpt_data, sp2_run, tmp_path / "run", drop_steps=(8,), sequence_parallel=1)
    result = run(train_command(recipe, 2, "none", 0, "--resume"))
    assert "world 2 (dp 1 x sp 2) -> world 2 (dp 2 x sp 1): same data order" in result.stdout
    _assert_continues_the_reference(tmp_path / "run" / "stage1", reference)


def test_one_process_resumes_on_two(ckpt_data: dict, reference: dict, tmp_path: Path) -> None:
    recipe = interrupted_copy(ckpt_data, reference["out"], tmp_path / "run", drop_steps=(8,))
    result = run(train_command(recipe, 2, "none", 0, "--resume"))
    assert "world 1 (dp 1 x sp 1) -> world 2 (dp 2 x sp 1): same data order" in result.stdout
    _assert_continues_the_reference(tmp_path / "run" / "stage1", reference)
