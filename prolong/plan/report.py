"""How a plan is shown: a table per stage, a verdict line, and the same as JSON for machines."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass
from typing import Any

from prolong.config import format_count
from prolong.errors import UserError
from prolong.plan.dry_run import DryRun
from prolong.plan.fake import LiveStorage
from prolong.plan.memory import GIB, MemoryPlan

_UNITS = {
    "b": 1,
    "": 2**30,
    "g": 2**30,
    "gib": 2**30,
    "gb": 10**9,
    "m": 2**20,
    "mib": 2**20,
    "mb": 10**6,
    "t": 2**40,
    "tib": 2**40,
    "tb": 10**12,
}
_LABELS = {
    "parameters": "parameters",
    "gradients": "gradients",
    "optimizer_state": "optimizer state",
    "activations": "activations",
    "temporaries": "temporaries",
    "communication": "communication",
}


_HOST_LABELS = {
    "parameters": "parameters",
    "gradients": "gradients",
    "optimizer_state": "optimizer state",
    "activations": "checkpointed inputs and other",
}
GPUS_PER_NODE = 8


def host_per_node(run: DryRun, host_per_gpu: int) -> str:
    """The host memory a node needs: every GPU's offloaded bytes (pinned on GPUs), one node of up to
    GPUS_PER_NODE GPUs."""
    gpus = min(run.world_size, GPUS_PER_NODE)
    return f"host memory per node of {gpus} GPU{'s' if gpus > 1 else ''}: {size(gpus * host_per_gpu)} (pinned)"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def parse_memory(text: str, what: str = "--gpu-memory") -> int:
    """Bytes of a size such as "80GiB", "141GB", "80" (GiB); GB and MB are powers of ten."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise UserError(f"{what}: expected a size like 80GiB, 141GB or 24GiB, got {text!r}")
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass
class Capacity:
    """What one GPU offers a run: its memory, less a reserve for what the tracker cannot see (the CUDA
    context, NCCL and cuBLAS workspaces, the caching allocator's fragmentation)."""

    gpu_memory: int
    reserve: float = 0.10

    def __post_init__(self) -> None:
        if not 0 <= self.reserve < 1:
            raise UserError(f"--reserve must be a fraction in [0, 1), got {self.reserve}")

    @property
    def usable(self) -> int:
        return int(self.gpu_memory * (1 - self.reserve))


def fits(run: DryRun, capacity: Capacity) -> bool:
    return run.memory.peak <= capacity.usable


def size(nbytes: float) -> str:
    """A byte count as a person reads it: GiB from 1 GiB, else MiB."""
    return f"{nbytes / GIB:.1f} GiB" if abs(nbytes) >= GIB else f"{nbytes / 2**20:.1f} MiB"


def verdict(run: DryRun, capacity: Capacity) -> str:
    """One line: "fits: ..." or "does not fit: needs X GiB, have Y"."""
    need, have = run.memory.peak, capacity.usable
    of = f"{size(capacity.gpu_memory)} less {capacity.reserve:.0%} reserve"
    if fits(run, capacity):
        return f"fits: needs {size(need)} per GPU of {size(have)} usable ({of}), {size(have - need)} headroom"
    return f"does not fit: needs {size(need)} per GPU, have {size(have)} ({of})"


def format_plan(recipe_name: str, model_source: str, run: DryRun, capacity: Capacity) -> str:
    """The table of one stage's plan, its verdict last."""
    memory = run.memory
    unit, unit_size = ("GiB", GIB) if memory.peak >= GIB / 4 else ("MiB", 2**20)
    lines = [
        (
            f"{recipe_name} / {run.stage}: world size {run.world_size} = data parallel "
            f"{run.data_parallel} x sequence parallel {run.sequence_parallel}"
        ),
        (
            f"  seq_len {format_count(run.seq_len)}, {run.tokens_per_gpu:,} tokens per GPU per "
            f"micro-batch, gradient accumulation {run.grad_accumulation}"
        ),
        f"  model: {model_source}, {_count(run.parameters)} parameters; attention: {run.attention}",
        f"  {run.activation_policy}",
        "",
        f"  {'per GPU':<18}{unit:>9}",
    ]
    for name, value in memory.categories().items():
        lines.append(f"  {_LABELS[name]:<18}{value / unit_size:>9.2f}")
    lines += [
        f"  {'peak':<18}{memory.peak / unit_size:>9.2f}   (during {memory.phase})",
        (
            f"  {'usable':<18}{capacity.usable / unit_size:>9.2f}   ({size(capacity.gpu_memory)} less "
            f"{capacity.reserve:.0%} reserve)"
        ),
        f"  {'headroom':<18}{(capacity.usable - memory.peak) / unit_size:>9.2f}",
    ]
    if memory.host:
        parts = ", ".join(
            f"{_HOST_LABELS[name]} {size(value)}" for name, value in memory.host_categories.items() if value
        )
        lines.append(f"  {'host memory':<18}{memory.host / unit_size:>9.2f}   (per GPU, offloaded: {parts})")
        lines.append(f"  {'':<18}{'':>9}   {host_per_node(run, memory.host)}")
    lines += [f"  note: {note}" for note in run.notes]
    lines += [f"  dry run: {run.seconds:.1f} s", verdict(run, capacity)]
    return "\n".join(lines)


def plan_json(recipe_name: str, model_source: str, run: DryRun, capacity: Capacity) -> dict[str, Any]:
    """The plan of one stage for machines: every number of the table, bytes not GiB."""
    data = asdict(run)
    data.update(
        recipe=recipe_name,
        model_source=model_source,
        gpu_memory=capacity.gpu_memory,
        reserve=capacity.reserve,
        usable=capacity.usable,
        fits=fits(run, capacity),
        verdict=verdict(run, capacity),
    )
    return data


def dry_run_from_json(entry: dict[str, Any]) -> DryRun:
    """The DryRun of one stage back from `plan_json` (the output of `prolong plan --json`)."""
    fields = {f.name for f in dataclasses.fields(DryRun)}
    values = {k: v for k, v in entry.items() if k in fields}
    values["memory"] = MemoryPlan(**values["memory"])
    values["live_at_limit"] = [LiveStorage(**live) for live in values.get("live_at_limit", [])]
    return DryRun(**values)
