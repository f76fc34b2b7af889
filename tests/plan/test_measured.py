"""Planned peak vs the peak measured by a real optimizer step on this CPU (issue 12, item 4).

The plan is a dry run on fake tensors (target "cpu": float32 and the CPU kernels, as this machine
runs); the measurement is the same stage built and stepped for real under torchrun (gloo), its
allocations counted by torch's profiler (prolong.plan.measure). Same accounting: bytes of tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prolong.plan.bound import memory_upper_bound
from prolong.plan.dry_run import dry_run
from prolong.plan.measure import VALIDATION_CASES, validation_recipe
from prolong.plan.model_config import plan_model

WORKER = Path(__file__).with_name("measure_worker.py")
TOLERANCE = 0.15


@pytest.fixture(scope="module")
def measured(torchrun, tmp_path_factory) -> dict[str, int]:
    out = tmp_path_factory.mktemp("measured")
    peaks: dict[str, int] = {}
    for nproc in sorted({case.world_size for case in VALIDATION_CASES}):
        torchrun(WORKER, nproc, str(out / f"world{nproc}.json"), timeout=600)
        peaks.update(json.loads((out / f"world{nproc}.json").read_text()))
    return peaks


@pytest.mark.distributed
@pytest.mark.parametrize("case", VALIDATION_CASES, ids=[c.name for c in VALIDATION_CASES])
def test_planned_peak_within_tolerance_of_measured(case, measured) -> None:
    recipe = validation_recipe(case)
    run = dry_run(recipe, recipe.stages[0], case.world_size, plan_model(recipe).config, target="cpu")
    error = run.memory.peak / measured[case.name] - 1
    assert abs(error) <= TOLERANCE, (case.name, run.memory.peak, measured[case.name])


@pytest.mark.distributed
@pytest.mark.parametrize("case", VALIDATION_CASES, ids=[c.name for c in VALIDATION_CASES])
def test_quick_upper_bound_is_above_the_measured_peak(case, measured) -> None:
    """`prolong train` skips the dry run when this bound fits: it must never be below a real step."""
    recipe = validation_recipe(case)
    bound = memory_upper_bound(plan_model(recipe).config, recipe.stages[0], recipe.training)
    assert bound is not None and bound >= measured[case.name], (case.name, bound, measured[case.name])
