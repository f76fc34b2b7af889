"""A forced loss kernel that cannot run here stops `prolong train` before any stage starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_run import tiny_recipe, write_corpora, write_recipe

from prolong.errors import UserError


@pytest.mark.skipif(torch.cuda.is_available(), reason="liger may run where CUDA is present")
def test_forced_liger_is_refused_on_cpu(tmp_path: Path) -> None:
    from prolong.train.commands import train

    recipe = tiny_recipe(write_corpora(tmp_path / "raw"), tmp_path / "run", tmp_path / "data",
                         {"train_vocab_size": 300})
    recipe["training"]["loss_kernel"] = "liger"
    with pytest.raises(UserError, match="training.loss_kernel: liger needs liger-kernel"):
        train(str(write_recipe(recipe, tmp_path / "liger.yaml")))
    assert not (tmp_path / "run").exists()  # refused before a model, tokenizer or checkpoint was written
