"""Whole-run helpers of the checkpoint, resume and fault tests: a one-stage tiny recipe (8 steps,
checkpoints after steps 4 and 8), runs through ckpt_fault_run.py alone or under torchrun, and copies
of a finished run made to look interrupted."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_run import tiny_recipe, write_recipe

from prolong.train.metrics import read_metrics

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
FAULT_RUN = Path(__file__).with_name("ckpt_fault_run.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")
STEPS = 8


def stage1_recipe(data: dict, out: Path, sequence_parallel: int = 1, **training: object) -> Path:
    """The tiny recipe's first stage alone, writing into `out`; returns the recipe file beside it."""
    recipe = tiny_recipe(data["corpora"], out, data["shard_dir"], {"path": data["tokenizer"]})
    recipe["stages"] = [dict(recipe["stages"][0], sequence_parallel=sequence_parallel)]
    recipe["training"].update(training)
    return write_recipe(recipe, out.parent / f"{out.name}.yaml")


def train_command(recipe: Path, nproc: int = 1, fault: str = "none", max_restarts: int = 0, *extra: str) -> list:
    args = [str(FAULT_RUN), fault, "train", str(recipe), "--max-steps", str(STEPS), *extra]
    if nproc == 1:
        return [sys.executable, *args]
    return [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", f"--max-restarts={max_restarts}", *args]


def run(command: list, expect: int | None = 0, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `command`; fail the test with its output unless it exits with `expect` (None: any)."""
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=timeout, check=False)
    if expect is not None and result.returncode != expect:
        pytest.fail(
            f"{' '.join(map(str, command))} exited {result.returncode}, expected {expect}:\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        )
    return result


def losses(stage_dir: Path) -> dict[int, float]:
    """Loss per step; a resumed run's repeated steps keep their latest record."""
    return {r["step"]: r["loss"] for r in read_metrics(stage_dir / "metrics.jsonl")}


def records(stage_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(stage_dir / "metrics.jsonl")}


def interrupted_copy(data: dict, finished: Path, out: Path, drop_steps: tuple[int, ...] = (), **recipe_args) -> Path:
    """A copy of the finished run `finished` in `out`, without its export, its metrics and the checkpoints
    of `drop_steps`: what a run stopped after its last remaining checkpoint leaves. Returns its recipe."""
    shutil.copytree(finished, out)
    stage = out / "stage1"
    shutil.rmtree(stage / "export")
    (stage / "metrics.jsonl").unlink()
    for step in drop_steps:
        shutil.rmtree(stage / "checkpoints" / f"step_{step:08d}")
    return stage1_recipe(data, out, **recipe_args)
