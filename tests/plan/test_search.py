"""--max-length: shallow probes (2 and 4 layers, extended) settled with full dry runs; suggestions."""

from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace

import pytest

from prolong.plan.dry_run import dry_run
from prolong.plan.measure import VALIDATION_CASES, validation_recipe
from prolong.plan.model_config import plan_model
from prolong.plan.report import Capacity, fits
from prolong.plan.search import GRANULE, longest_length, settle
from prolong.plan.suggest import suggest_switches

CASE = dataclasses.replace(VALIDATION_CASES[0], seq_len=1024)
LAYERS = 6


@pytest.mark.parametrize("estimate", [3 * GRANULE, 40 * GRANULE, 70 * GRANULE])
def test_settle_finds_the_longest_fitting_length_from_any_estimate(estimate: int) -> None:
    """The shallow estimate is settled with full dry runs: up while the next still fits, else down."""
    limit = 50 * GRANULE  # stand-in dry runs: the peak is the length, so lengths up to 50K fit

    def probe(length: int) -> SimpleNamespace:
        return SimpleNamespace(memory=SimpleNamespace(peak=length))

    best, peak, runs = settle(probe, Capacity(limit, reserve=0.0), estimate, 1 / 16)
    assert peak == best <= limit < max(best + GRANULE, int(best * 17 / 16) // GRANULE * GRANULE)
    assert runs >= 2


def test_longest_length_is_checked_with_all_layers() -> None:
    recipe = validation_recipe(CASE)
    config = copy.deepcopy(plan_model(recipe).config)
    config.num_hidden_layers = LAYERS
    capacity = Capacity(160 * 2**20, reserve=0.0)
    result = longest_length(recipe, recipe.stages[0], CASE.world_size, config, capacity, 1, "cpu", start=1024)
    assert result.max_seq_len >= GRANULE and not result.at_least
    stage = recipe.stages[0].model_copy(
        update={"seq_len": result.max_seq_len, "tokens_per_step": result.max_seq_len * CASE.world_size}
    )
    planned = recipe.model_copy(update={"stages": [stage]})
    full = dry_run(planned, stage, CASE.world_size, config, target="cpu")
    assert fits(full, capacity) and full.memory.peak == result.peak
    longer = stage.model_copy(
        update={"seq_len": 2 * result.max_seq_len, "tokens_per_step": 2 * result.max_seq_len * CASE.world_size}
    )
    planned = recipe.model_copy(update={"stages": [longer]})
    assert not fits(dry_run(planned, longer, CASE.world_size, config, target="cpu"), capacity)


@pytest.mark.slow  # up to eight dry runs
def test_a_stage_that_does_not_fit_is_told_the_switch_that_makes_it_fit() -> None:
    case = dataclasses.replace(VALIDATION_CASES[0], seq_len=2048)
    recipe = validation_recipe(case)
    config = plan_model(recipe).config
    stage = recipe.stages[0]

    def peak(**switches: bool) -> int:
        changed = stage.model_copy(update=switches)
        planned = recipe.model_copy(update={"stages": [changed]})
        return dry_run(planned, changed, case.world_size, config, target="cpu").memory.peak

    plain, offloaded = peak(), peak(offload_activations=True, offload_parameters=True, tiled_mlp=True, tiled_norms=True)
    capacity = Capacity((plain + offloaded) // 2, reserve=0.0)
    found = suggest_switches(recipe, stage, case.world_size, config, capacity, "cpu")
    assert found is not None and found.peak <= capacity.usable
    assert found.peak == peak(**found.switches)
    assert "stages.0 ('stage')" in found.describe(0, stage)
    assert suggest_switches(recipe, stage, case.world_size, config, Capacity(offloaded // 2, 0.0), "cpu") is None
