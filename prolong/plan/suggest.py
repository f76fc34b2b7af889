"""When a stage does not fit: which memory switches would make it fit, cheapest first.

Each candidate is a dry run of the same stage with some of the stage's memory switches turned on
(tiled_mlp / tiled_norms, offload_activations, offload_parameters), stopped as soon as it is over the
usable memory. The first that fits is the suggestion; the order is by what a switch costs in speed:
tiling recomputes per-token work, activation offload copies each layer's input to the host and back,
parameter offload also moves every layer's weights and gradients and runs AdamW on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PretrainedConfig

from prolong.config import Recipe, StageSpec
from prolong.parallel.parallelize import stage_activation_policy
from prolong.plan.dry_run import Target, dry_run
from prolong.plan.report import Capacity, fits, size

TILED = {"tiled_mlp": True, "tiled_norms": True}
LADDER: tuple[dict[str, bool], ...] = (
    TILED,
    {"offload_activations": True},
    {"offload_activations": True, **TILED},
    {"offload_parameters": True, **TILED},
    {"offload_activations": True, "offload_parameters": True},
    {"offload_activations": True, "offload_parameters": True, **TILED},
)


@dataclass
class Suggestion:
    """Stage keys to set, and the peak per GPU the stage then needs."""

    switches: dict[str, bool]
    peak: int

    def describe(self, index: int, stage: StageSpec) -> str:
        keys = ", ".join(f"{key}: {str(value).lower()}" for key, value in self.switches.items())
        return (
            f"would fit with {keys} in stages.{index} ({stage.name!r}) or under training: "
            f"needs {size(self.peak)} per GPU then"
        )


def suggest_switches(
    recipe: Recipe,
    stage: StageSpec,
    world_size: int,
    config: PretrainedConfig,
    capacity: Capacity,
    target: Target = "cuda",
) -> Suggestion | None:
    """The cheapest switches (LADDER) with which `stage` fits, or None when none does."""
    index = recipe.stages.index(stage)
    current = stage_activation_policy(recipe.training, stage, index)
    tried: set[tuple] = set()
    for switches in LADDER:
        changed = {key: value for key, value in switches.items() if getattr(current, key) != value}
        if not changed or tuple(sorted(changed.items())) in tried:
            continue
        tried.add(tuple(sorted(changed.items())))
        if changed.get("offload_activations") and not stage.activation_checkpointing:
            changed["activation_checkpointing"] = True
        candidate = stage.model_copy(update=changed)
        planned = recipe.model_copy(
            update={"stages": [*recipe.stages[:index], candidate, *recipe.stages[index + 1 :]]}
        )
        run = dry_run(planned, candidate, world_size, config, target, limit=capacity.usable)
        if fits(run, capacity):
            return Suggestion(changed, run.memory.peak)
    return None
