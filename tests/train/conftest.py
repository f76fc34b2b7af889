"""Fixtures of the training tests: a one-process mesh per module, and for the checkpoint, resume and
fault tests data built once and one uninterrupted one-process run of the tiny recipe's first stage that
the others are compared with."""

from __future__ import annotations

import sys

import pytest
import torch.distributed as dist
from ckpt_helpers import losses, run, stage1_recipe, train_command
from tiny_run import tiny_recipe, write_corpora, write_recipe

from prolong.parallel.mesh import ParallelMesh, init_distributed


@pytest.fixture(scope="module")
def mesh():
    created = not dist.is_initialized()
    init_distributed()
    yield ParallelMesh.create(1)
    if created:
        dist.destroy_process_group()


@pytest.fixture(scope="session")
def ckpt_data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Corpora, a trained tokenizer and stage1's shards, built once."""
    root = tmp_path_factory.mktemp("ckpt_data")
    corpora = write_corpora(root / "raw")
    recipe = tiny_recipe(corpora, root / "build", root / "shards", {"train_vocab_size": 300})
    path = write_recipe(recipe, root / "build.yaml")
    run([sys.executable, "-m", "prolong", "data", "build", str(path), "--stage", "stage1"])
    return {"corpora": corpora, "shard_dir": str(root / "shards"), "tokenizer": str(root / "build" / "tokenizer")}


@pytest.fixture(scope="session")
def ckpt_reference(ckpt_data: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """stage1 uninterrupted in one process: its output directory and per-step losses."""
    out = tmp_path_factory.mktemp("ckpt_reference") / "run"
    recipe = stage1_recipe(ckpt_data, out)
    run(train_command(recipe))
    return {"out": out, "losses": losses(out / "stage1"), "recipe": recipe}

