"""`prolong train` and `prolong checkpoint verify`: typed command functions whose docstring is the --help."""

from __future__ import annotations

import os
from pathlib import Path

import torch.distributed as dist
from rich.console import Console

from prolong.config import load_recipe
from prolong.errors import UserError
from prolong.parallel.mesh import ParallelMesh, init_distributed
from prolong.train.checkpoint import (
    MANIFEST,
    checkpoint_dirs,
    describe_write_error,
    read_manifest,
    verify_checkpoint,
)
from prolong.train.loop import run_stage
from prolong.train.resume import resolve_resume
from prolong.train.stages import export_dir, export_stage, is_finished, prepare_stage, validate_run


class ExportWriteError(UserError):
    """A stage's export could not be written (disk full, no permission); its checkpoints are intact."""


def train(
    recipe: str,
    stage: str | None = None,
    resume: bool | None = None,
    resume_from: str | None = None,
    max_steps: int | None = None,
    plan: bool = True,
) -> None:
    """Run a recipe's training stages: all in order, or only --stage NAME (a comma list: NAME,NAME).

    One process: `prolong train RECIPE`. Several: `torchrun --nproc_per_node N -m prolong train RECIPE`
    (gloo on CPU, nccl on GPU; across nodes, the same with torchrun's rendezvous flags). Each stage
    starts from the previous stage's export with a fresh LR schedule (and its AdamW state when the
    recipe says carry_optimizer_state), writes checkpoints to OUTPUT_DIR/STAGE/checkpoints, metrics
    to OUTPUT_DIR/STAGE/metrics.jsonl and ends with a Hugging Face export in OUTPUT_DIR/STAGE/export.

    --resume continues an interrupted stage from its newest checkpoint that verifies (same data
    position, LR and RNG state; a damaged checkpoint is reported and skipped) and skips stages that
    are already finished; --no-resume refuses to touch a stage that has checkpoints. Without either,
    the recipe's training.resume decides (auto: resume when torchrun --max-restarts restarted the
    workers). --resume-from STEP_OR_PATH resumes the first selected stage from that checkpoint, even
    when the stage is finished (newer checkpoints are moved aside). --max-steps N shortens every stage
    to at most N steps, with the LR schedule fitted to the shorter stage (demos and tests).

    Before anything is loaded, each stage is planned at this world size (`prolong plan` on fake tensors,
    in a subprocess: seconds for tiny models, about a minute per 8B stage): a stage that will not fit in
    this machine's device memory stops the run with the plan's numbers. --no-plan skips the check.
    """
    spec = load_recipe(recipe)
    selected = spec.select_stages(stage)
    training = spec.training
    if plan:  # before the process group: a dry run has its own fake one
        from prolong.plan.commands import check_stages_fit

        to_plan = [
            s.name for i, s in enumerate(selected) if not is_finished(spec, s) or (i == 0 and resume_from)
        ]
        check_stages_fit(recipe, to_plan, int(os.environ.get("WORLD_SIZE", "1")))
    init_distributed(training.collective_timeout_s, Path(spec.output_dir) / "flight_recorder"
                     if training.flight_recorder else None)
    console = Console()
    do_resume, why = resolve_resume(training.resume, True if resume_from else resume)
    try:
        validate_run(spec, selected, dist.get_world_size())
        if dist.get_rank() == 0:
            print(f"resume: {'yes' if do_resume else 'no'} ({why})", flush=True)
        for position, current in enumerate(selected):
            index = spec.stages.index(current)
            chosen = resume_from if position == 0 else None
            if is_finished(spec, current) and chosen is None:
                if not do_resume:
                    raise UserError(
                        f"stage {current.name!r} is already finished ({export_dir(spec, current)}); pass --resume "
                        "to skip finished stages, or delete its directory to train it again"
                    )
                if dist.get_rank() == 0:
                    console.print(f"stage {current.name!r} already finished, skipping")
                continue
            mesh = ParallelMesh.create(current.sequence_parallel)
            run, tokenizer = prepare_stage(spec, index, mesh, do_resume, max_steps, resume_from=chosen)
            if mesh.is_main:
                console.print(
                    f"stage {current.name!r}: steps {run.start_step}->{run.num_steps}, world {mesh.world_size} "
                    f"(dp {mesh.dp_size} x sp {mesh.sp_size}), {current.sequences_per_step} sequences of "
                    f"{current.seq_len} tokens per step"
                )
            run_stage(run)
            try:
                path = export_stage(run, spec, tokenizer)
            except OSError as error:
                raise ExportWriteError(
                    describe_write_error(f"stage {current.name!r} export", error, export_dir(spec, current))
                    + f"; its checkpoints in {run.checkpoint_dir} are intact: free space or fix permissions, "
                    "then run again with --resume"
                ) from error
            if mesh.is_main:
                console.print(f"stage {current.name!r} finished: {path}")
    finally:
        dist.destroy_process_group()


def verify(directory: str) -> int:
    """Check checkpoints without loading a model: each file's size and checksum against its manifest.

    DIRECTORY is a run's output directory, a stage directory, a checkpoints directory or one
    checkpoint. Prints one line per checkpoint (ok, or the file and what is wrong); exit status 1 when
    any checkpoint is damaged, 2 when there is none.
    """
    root = Path(directory)
    if (root / MANIFEST).is_file() or root.name.startswith("step_"):
        checkpoints = [root]
    else:
        roots = [root] if root.name == "checkpoints" else sorted(root.glob("checkpoints")) + sorted(
            root.glob("*/checkpoints")
        )
        checkpoints = [path for r in roots for path in checkpoint_dirs(r)]
    if not checkpoints:
        raise UserError(f"{root}: no checkpoints found (looked for step_NNNNNNNN directories)")
    damaged = 0
    for path in checkpoints:
        problems = verify_checkpoint(path)
        if problems:
            damaged += 1
            print(f"DAMAGED {path}: " + "; ".join(problems))
        else:
            files = read_manifest(path)["files"]
            size = sum(record["size"] for record in files.values())
            print(f"ok      {path} ({len(files)} files, {size / 2**20:,.1f} MiB)")
    return 1 if damaged else 0
