"""`prolong plan`, and the same plan as `prolong train`'s first check."""

from __future__ import annotations

import json as json_module
import os
import subprocess
import sys

import psutil
import torch
from transformers import PretrainedConfig

from prolong.config import Recipe, StageSpec, format_count, load_recipe
from prolong.errors import UserError
from prolong.plan.bound import memory_upper_bound
from prolong.plan.dry_run import TARGETS, DryRun, Target, dry_run
from prolong.plan.memory import GIB
from prolong.plan.model_config import plan_model
from prolong.plan.peak import explain_peak, format_peak
from prolong.plan.report import Capacity, dry_run_from_json, fits, format_plan, parse_memory, plan_json, size
from prolong.plan.search import max_lengths
from prolong.plan.suggest import suggest_switches


def plan(
    recipe: str,
    world_size: int = 8,
    gpu_memory: str = "80GiB",
    stage: str | None = None,
    max_length: bool = False,
    json: bool = False,
    reserve: float = 0.10,
    target: str = "cuda",
    explain: bool = False,
) -> int:
    """Plan a recipe at its real size without GPUs or weights: per-GPU memory of each stage, and a verdict.

    For each stage (all, or --stage NAME[,NAME]) the recipe's model is built from its config.json (the
    checkpoint's, else model.config: a shipped llama-3-8b, llama-3.1-8b or qwen2.5-7b), wrapped exactly
    as `prolong train` wraps it (sequence parallelism, activation checkpointing, FSDP2, chunked loss)
    and trained for one optimizer step of a seq_len sequence on fake tensors, with a fake process group
    of --world-size ranks (default 8: one node). torch's FSDP2 memory tracker measures the peak per
    GPU, by category.

    --gpu-memory: memory of one GPU (80GiB, 141GB, ...); --reserve: the share of it kept for what the
    tracker cannot see (CUDA context, NCCL buffers, allocator fragmentation). --max-length: also the
    longest seq_len that fits at each sequence-parallel degree (a binary search over dry runs; minutes).
    --target cpu plans a CPU run instead (float32, the CPU kernels). --json prints one JSON object.
    --explain: also what the GPU holds at the peak, the largest tensors grouped by the op and module
    that made them (a second dry run). A stage that does not fit gets a line naming the memory switches
    (tiled_mlp, tiled_norms, offload_activations, offload_parameters) that would make it fit.
    Exit status 1 when a stage does not fit. A stage that cannot run at this world size (heads not
    divisible by the SP degree, a batch that does not split) is an error naming the recipe key.
    """
    if target not in TARGETS:
        raise UserError(f"--target must be one of {TARGETS}, got {target!r}")
    spec = load_recipe(recipe)
    capacity = Capacity(parse_memory(gpu_memory), reserve)
    model = plan_model(spec)
    stages = [spec.stage(name.strip()) for name in stage.split(",")] if stage else list(spec.stages)
    results = []
    all_fit = True
    for current in stages:
        run = dry_run(spec, current, world_size, model.config, target)  # type: ignore[arg-type]
        all_fit &= fits(run, capacity)
        entry = plan_json(spec.name, model.source, run, capacity)
        if not fits(run, capacity):
            entry["suggestion"] = suggestion(spec, current, world_size, model.config, capacity, target)
        if not json:
            print(format_plan(spec.name, model.source, run, capacity), flush=True)
            if "suggestion" in entry:
                print(f"  {entry['suggestion']}", flush=True)
        if explain:
            _, groups = explain_peak(spec, current, world_size, model.config, target)  # type: ignore[arg-type]
            entry["peak_tensors"] = [vars(g) for g in groups]
            if not json:
                print("at the peak, the largest tensors on the GPU:\n" + format_peak(groups), flush=True)
        if max_length:
            progress = None if json else lambda line: print(line, file=sys.stderr, flush=True)
            if not json:
                print(
                    f"longest seq_len that fits ({capacity.usable / GIB:.1f} GiB usable per GPU, world size "
                    f"{world_size}):",
                    flush=True,
                )
            lengths = max_lengths(spec, current, world_size, model.config, capacity, target, progress)  # type: ignore[arg-type]
            entry["max_length"] = [vars(r) for r in lengths]
            if not json:
                for r in lengths:
                    shown = format_count(r.max_seq_len) if r.max_seq_len else "none"
                    more = " or more" if r.at_least else ""
                    peak = f" ({r.peak / GIB:.1f} GiB)" if r.max_seq_len else ""
                    print(
                        f"  sequence parallel {r.sequence_parallel:>3}: {shown}{more}{peak}, "
                        f"{r.dry_runs} dry runs",
                        flush=True,
                    )
        results.append(entry)
        if not json:
            print(flush=True)
    if json:
        print(json_module.dumps({"recipe": spec.name, "world_size": world_size, "stages": results}, indent=2))
    return 0 if all_fit else 1


def suggestion(
    spec: Recipe, stage: StageSpec, world_size: int, config: PretrainedConfig, capacity: Capacity, target: str
) -> str:
    """The line that says which memory switches would make a stage that does not fit, fit."""
    found = suggest_switches(spec, stage, world_size, config, capacity, target)  # type: ignore[arg-type]
    if found is None:
        return (
            "no memory switch (tiled_mlp, tiled_norms, offload_activations, offload_parameters) makes it fit: "
            "raise sequence_parallel or the world size, or shorten seq_len"
        )
    return found.describe(spec.stages.index(stage), stage)


def this_machine() -> tuple[Capacity, Target]:
    """The memory of one of this machine's devices and what a run here is: a GPU's (CUDA), or on CPU the
    available host memory shared by the processes of this node (LOCAL_WORLD_SIZE)."""
    if torch.cuda.is_available():
        index = int(os.environ.get("LOCAL_RANK", "0"))
        return Capacity(torch.cuda.get_device_properties(index).total_memory), "cuda"
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return Capacity(psutil.virtual_memory().available // local), "cpu"


def check_stages_fit(recipe: str, stages: list[str], world_size: int) -> list[DryRun]:
    """`prolong train`'s first check: the plan of each stage at this run's world size on this machine's
    devices; stops with the plan's numbers when one will not fit (before weights or data are loaded).

    The dry runs run in a `prolong plan` subprocess: the fake world must not share a process with the
    real run (DTensor caches sharding decisions per mesh shape; prolong.plan.fake.forget_mesh_caches),
    and the run that follows is then the same with and without the check.
    """
    capacity, target = this_machine()
    stages = _needing_a_dry_run(recipe, stages, capacity, target)
    if not stages:
        return []
    command = [sys.executable, "-m", "prolong", "plan", recipe, "--stage", ",".join(stages)]
    command += ["--world-size", str(world_size), "--gpu-memory", f"{capacity.gpu_memory}B"]
    command += ["--reserve", str(capacity.reserve), "--target", target, "--json"]
    env = {k: v for k, v in os.environ.items() if k not in _DISTRIBUTED_ENV}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode not in (0, 1):
        raise UserError(
            f"the plan of {recipe} failed before training ({' '.join(command)}):\n{result.stderr[-4000:]}\n"
            "fix what it names, or pass --no-plan to train without the check"
        )
    plan = json_module.loads(result.stdout)
    runs = []
    for entry in plan["stages"]:
        run = dry_run_from_json(entry)
        if not fits(run, capacity):
            raise UserError(
                format_plan(plan["recipe"], entry["model_source"], run, capacity)
                + (f"\n{entry['suggestion']}" if "suggestion" in entry else "")
                + f"\nstage {run.stage!r} will not fit on this machine's {target} devices; change the stage "
                "(sequence_parallel, seq_len, activation policies) or the world size, or pass --no-plan to "
                "start anyway"
            )
        if int(os.environ.get("RANK", "0")) == 0:
            print(
                f"plan: stage {run.stage!r} needs {size(run.memory.peak)} per {target} device of "
                f"{size(capacity.usable)} usable ({run.seconds:.0f} s dry run)",
                flush=True,
            )
        runs.append(run)
    return runs


def _needing_a_dry_run(recipe: str, stages: list[str], capacity: Capacity, target: Target) -> list[str]:
    """The stages whose generous upper bound (prolong.plan.bound) does not already fit; the others are
    printed with their bound."""
    spec = load_recipe(recipe)
    try:
        config = plan_model(spec).config
    except UserError:  # the dry run reports it with its full message
        return stages
    needed = []
    for name in stages:
        bound = memory_upper_bound(config, spec.stage(name), spec.training)
        if bound is None or bound > capacity.usable:
            needed.append(name)
        elif int(os.environ.get("RANK", "0")) == 0:
            print(f"plan: stage {name!r} needs at most {size(bound)} per {target} device of {size(capacity.usable)} "
                  "usable (upper bound from the config; no dry run needed)", flush=True)
    return needed


# torchrun's variables: the planning subprocess is one process of its own
_DISTRIBUTED_ENV = frozenset(
    {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT"}
)
