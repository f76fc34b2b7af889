"""One torchrun launch of policy_worker.py shared by test_tiled_mlp.py and test_offload.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def policy_results(tmp_path_factory: pytest.TempPathFactory, torchrun) -> dict[str, dict]:
    """{"<arch>_sp<N>": {policy name: {"loss", "grads", offload stats}}} from one 2-process run."""
    out = tmp_path_factory.mktemp("policies")
    torchrun(HERE / "policy_worker.py", 2, str(out), timeout=600)  # 24 steps; a busy machine is slow
    return {p.stem: torch.load(p, weights_only=True) for p in sorted(out.glob("*.pt"))}
