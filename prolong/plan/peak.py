"""What the device holds at the peak of a dry run: every live storage, grouped by the op and module
that made it (`prolong plan --explain`).

Two dry runs: the first finds the peak, the second stops one byte below it (the tracker's limit), which
is the same moment of the same deterministic step, and lists what is alive then. This is how the
planner's categories (temporaries, activations, ...) are traced back to the model's code.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from transformers import PretrainedConfig

from prolong.config import Recipe, StageSpec
from prolong.plan.dry_run import DryRun, Target, dry_run
from prolong.plan.memory import GIB


@dataclass(frozen=True)
class PeakGroup:
    """Storages alive at the peak that share their origin, shape, dtype and category."""

    nbytes: int
    count: int
    kind: str
    origin: str
    shape: tuple[int, ...]
    dtype: str


def explain_peak(
    recipe: Recipe,
    stage: StageSpec,
    world_size: int,
    config: PretrainedConfig,
    target: Target = "cuda",
    layers: int | None = None,
) -> tuple[DryRun, list[PeakGroup]]:
    """The dry run of `stage` and what its device holds at the peak, largest groups first."""
    run = dry_run(recipe, stage, world_size, config, target, layers=layers)
    again = dry_run(recipe, stage, world_size, config, target, limit=run.memory.peak - 1, layers=layers, explain=True)
    groups: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for live in again.live_at_limit:
        entry = groups[(live.kind, live.origin, live.shape, live.dtype)]
        entry[0] += live.nbytes
        entry[1] += 1
    ranked = [
        PeakGroup(nbytes, count, kind, origin, shape, dtype)
        for (kind, origin, shape, dtype), (nbytes, count) in groups.items()
    ]
    return run, sorted(ranked, key=lambda g: -g.nbytes)


def format_peak(groups: list[PeakGroup], top: int = 20) -> str:
    """The largest groups as a table (GiB, count, category, shape and dtype, origin)."""
    lines = [f"  {'GiB':>7} {'n':>4}  {'category':<16} {'shape, dtype':<34} made by"]
    for g in groups[:top]:
        shape = f"{list(g.shape)} {g.dtype.removeprefix('torch.')}" if g.shape else g.dtype
        lines.append(f"  {g.nbytes / GIB:>7.2f} {g.count:>4}  {g.kind:<16} {shape:<34} {g.origin}")
    rest = groups[top:]
    if rest:
        lines.append(f"  {sum(g.nbytes for g in rest) / GIB:>7.2f} {sum(g.count for g in rest):>4}  (the rest)")
    return "\n".join(lines)
