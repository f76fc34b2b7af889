"""Shared test helpers: launch a worker script under torchrun (gloo, CPU) from a test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TORCHRUN = Path(sys.executable).with_name("torchrun")


def run_torchrun(script: Path, nproc: int, *args: str, timeout: int = 240) -> None:
    """Run `script` with `nproc` processes; fail the test with the workers' output if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", str(script), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if result.returncode:
        pytest.fail(
            f"torchrun failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        )


@pytest.fixture(scope="session")  # session: usable by session fixtures that run one launch for many tests
def torchrun():
    return run_torchrun
