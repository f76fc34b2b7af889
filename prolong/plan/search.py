"""`--max-length`: the longest seq_len of a stage that fits, per sequence-parallel degree.

A binary search over dry runs: the stage with another seq_len and SP degree, everything else as the
recipe says (model, world size, activation policies, whether gradients accumulate). Memory grows with
the length, so the answer is the largest length whose dry run fits. A probe that does not fit stops as
soon as it holds more than the usable memory, so the failing half of the search is cheap.

Shallow probes: decoder layers are identical, so past the first few the peak grows by about the same
amount per layer. The search therefore probes with 2 and 4 layers and extends the line through them to
the model's depth: an estimate, cheap at any length (a dry run's cost is mostly per layer). The length
it finds is then settled with dry runs of all layers, stepping up while the next length still fits and
down until one does, so the answer is always a full dry run's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from transformers import PretrainedConfig

from prolong.config import Recipe, StageSpec
from prolong.errors import UserError
from prolong.parallel.mesh import validate_sequence_parallel
from prolong.plan.dry_run import DryRun, Target, dry_run
from prolong.plan.report import Capacity, fits

GRANULE = 1024  # lengths are searched in whole K tokens
PROBE_LAYERS = (2, 4)  # the shallow probes' depths (see the module docstring)
MAX_SEARCH_TOKENS = 64 * 2**20  # 64M: beyond this the search reports "at least"


@dataclass
class LengthResult:
    """The longest seq_len that fits at one SP degree (0: not even GRANULE tokens fit)."""

    sequence_parallel: int
    max_seq_len: int
    at_least: bool  # the search stopped at MAX_SEARCH_TOKENS with everything fitting
    peak: int  # per-GPU peak bytes of the dry run at max_seq_len (0 when nothing fits)
    dry_runs: int
    host: int = 0  # per-GPU host bytes there (what offload holds)


def sp_degrees(world_size: int, num_attention_heads: int, num_key_value_heads: int | None) -> list[int]:
    """The SP degrees 1, 2, 4, ... that this world and model allow."""
    degrees, sp = [], 1
    while sp <= world_size:
        try:
            validate_sequence_parallel(sp, world_size, num_attention_heads, num_key_value_heads)
            degrees.append(sp)
        except UserError:
            pass
        sp *= 2
    return degrees


def stage_at(stage: StageSpec, seq_len: int, sp: int, world_size: int, accumulate: bool) -> StageSpec:
    """`stage` at another length and SP degree; one sequence per data-parallel rank per micro-batch,
    and two micro-batches when the stage accumulates gradients (dry runs only tell 1 from several)."""
    per_step = (world_size // sp) * (2 if accumulate else 1)
    return stage.model_copy(
        update={
            "seq_len": seq_len,
            "sequence_parallel": sp,
            "tokens_per_step": seq_len * per_step,
            "mixture": [entry.model_copy(update={"doc_len": None}) for entry in stage.mixture],
        }
    )


def longest_fitting(
    probe: Callable[[int], DryRun], capacity: Capacity, start: int, precision: float = 1 / 16
) -> tuple[int, int, bool, int]:
    """(longest length that fits, its peak, whether capped, dry runs) over lengths in GRANULE steps.

    Doubles or halves from `start` to bracket the answer, then bisects until the bracket is within
    `precision` of the fitting end."""
    runs = 0
    best, best_peak, too_long = 0, 0, None
    length = max(GRANULE, start // GRANULE * GRANULE)
    while True:
        runs += 1
        run = probe(length)
        if fits(run, capacity):
            best, best_peak = length, run.memory.peak
            if too_long is not None or length >= MAX_SEARCH_TOKENS:
                break
            length *= 2
        else:
            too_long = length
            if best or length == GRANULE:
                break
            length = max(GRANULE, length // 2 // GRANULE * GRANULE)
    while too_long is not None and too_long - best > max(GRANULE, best * precision):
        middle = (best + too_long) // 2 // GRANULE * GRANULE
        runs += 1
        run = probe(middle)
        if fits(run, capacity):
            best, best_peak = middle, run.memory.peak
        else:
            too_long = middle
    return best, best_peak, too_long is None, runs


def settle(
    probe: Callable[[int], DryRun], capacity: Capacity, estimate: int, precision: float
) -> tuple[int, int, int]:
    """(longest length that fits, its peak, dry runs) near `estimate`, in steps of `precision`: up while
    the next length still fits, else down until one does."""
    def step(length: int, sign: int) -> int:  # by `precision`, at least one GRANULE
        rounded = int(length * (1 + sign * precision)) // GRANULE * GRANULE
        return max(length + GRANULE, rounded) if sign > 0 else max(GRANULE, min(length - GRANULE, rounded))

    run, runs = probe(estimate), 1
    if fits(run, capacity):
        best, peak = estimate, run.memory.peak
        while best < MAX_SEARCH_TOKENS:
            run, runs = probe(step(best, +1)), runs + 1
            if not fits(run, capacity):
                break
            best, peak = step(best, +1), run.memory.peak
        return best, peak, runs
    length = estimate
    while length > GRANULE:
        length = step(length, -1)
        run, runs = probe(length), runs + 1
        if fits(run, capacity):
            return length, run.memory.peak, runs
    return 0, 0, runs


def _shallow(run_2: DryRun, run_4: DryRun, layers: int) -> DryRun:
    """A probe of `layers` layers extended from dry runs of 2 and 4 (a lower bound of its peak)."""
    low, high = PROBE_LAYERS
    slope = (run_4.memory.peak - run_2.memory.peak) / (high - low)
    peak = int(run_4.memory.peak + slope * (layers - high))
    memory = dataclasses.replace(run_4.memory, peak=peak)
    return dataclasses.replace(run_4, memory=memory, complete=run_2.complete and run_4.complete)


def longest_length(
    recipe: Recipe,
    stage: StageSpec,
    world_size: int,
    config: PretrainedConfig,
    capacity: Capacity,
    sp: int,
    target: Target = "cuda",
    progress: Callable[[str], None] | None = None,
    precision: float = 1 / 16,
    start: int | None = None,
) -> LengthResult:
    """The longest seq_len of `stage` at SP degree `sp` that fits `capacity` at `world_size` (the
    search's lengths start at `start`, default the stage's seq_len)."""
    index = recipe.stages.index(stage)
    per_rank = stage.sequences_per_step // max(1, world_size // stage.sequence_parallel)
    accumulate = per_rank > 1
    layers = config.num_hidden_layers
    shallow = layers > PROBE_LAYERS[1]
    host: dict[int, int] = {}  # of the dry runs of all layers, by length

    def dry(length: int, depth: int | None) -> DryRun:
        candidate = stage_at(stage, length, sp, world_size, accumulate)
        stages = [*recipe.stages[:index], candidate, *recipe.stages[index + 1 :]]
        planned = recipe.model_copy(update={"stages": stages})
        run = dry_run(planned, candidate, world_size, config, target, limit=capacity.usable, layers=depth)
        if depth is None:
            host[length] = run.memory.host
        return run

    def report(length: int, run: DryRun, how: str) -> None:
        if progress is not None:
            shown = f"{run.memory.peak / 2**30:.1f} GiB" if run.complete else "over"
            progress(f"  sp {sp}: {length:,} tokens -> {shown} ({how}, {run.seconds:.0f} s)")

    def full(length: int) -> DryRun:
        run = dry(length, None)
        report(length, run, "all layers")
        return run

    def probe(length: int) -> DryRun:
        if not shallow:
            return full(length)
        run_2 = dry(length, PROBE_LAYERS[0])
        run_4 = dry(length, PROBE_LAYERS[1]) if run_2.complete else run_2
        run = _shallow(run_2, run_4, layers)
        run.seconds = run_2.seconds + (run_4.seconds if run_4 is not run_2 else 0)
        report(length, run, f"{PROBE_LAYERS[0]} and {PROBE_LAYERS[1]} layers extended to {layers}")
        return run

    best, peak, capped, runs = longest_fitting(probe, capacity, start or stage.seq_len, precision)
    if shallow and best:
        best, peak, settled = settle(full, capacity, best, precision)
        runs += settled
        capped = best >= MAX_SEARCH_TOKENS
    return LengthResult(sp, best, capped, peak, runs, host.get(best, 0))


def max_lengths(
    recipe: Recipe,
    stage: StageSpec,
    world_size: int,
    config: PretrainedConfig,
    capacity: Capacity,
    target: Target = "cuda",
    progress: Callable[[str], None] | None = None,
) -> list[LengthResult]:
    """For each allowed SP degree, the longest seq_len of `stage` that fits `capacity` at `world_size`."""
    heads = config.num_attention_heads
    return [
        longest_length(recipe, stage, world_size, config, capacity, sp, target, progress)
        for sp in sp_degrees(world_size, heads, getattr(config, "num_key_value_heads", None))
    ]
