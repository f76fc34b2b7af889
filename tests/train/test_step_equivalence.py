"""The gradient of a step is the mean over the global batch's valid tokens, whatever the layout:
one plain process with accumulation 4 == one packed batch of the 4 == 2 data-parallel ranks with very
different valid-token counts == 2 sequence-parallel ranks (FSDP2 + activation checkpointing on)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent


def _compare(result: dict, reference: dict, name: str) -> None:
    assert result["valid"] == reference["valid"]
    torch.testing.assert_close(result["loss"], reference["loss"], rtol=1e-5, atol=1e-6, msg=name)
    assert result["grads"].keys() == reference["grads"].keys()
    for key, grad in result["grads"].items():
        torch.testing.assert_close(grad, reference["grads"][key], rtol=1e-5, atol=1e-5, msg=f"{name}: {key}")


def _load(directory: Path, name: str) -> dict:
    return torch.load(directory / f"{name}.pt", weights_only=True)


@pytest.mark.distributed
def test_layouts_give_the_same_step(tmp_path: Path, torchrun) -> None:
    torchrun(HERE / "step_worker.py", 2, str(tmp_path))
    reference = _load(tmp_path, "reference")
    _compare(_load(tmp_path, "batch4"), reference, "one batch of 4 vs accumulation 4")
    _compare(_load(tmp_path, "dp2"), reference, "DP=2 with uneven valid tokens")
    _compare(_load(tmp_path, "sp2"), reference, "SP=2")


@pytest.mark.distributed
@pytest.mark.slow
def test_dp2_sp2_gives_the_same_step(tmp_path: Path, torchrun) -> None:
    torchrun(HERE / "step_worker.py", 4, str(tmp_path))
    _compare(_load(tmp_path, "dp2sp2"), _load(tmp_path, "reference"), "DP=2 x SP=2")
