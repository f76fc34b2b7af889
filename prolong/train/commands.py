"""`prolong train`: typed command functions whose docstring is the --help text."""

from __future__ import annotations

import torch.distributed as dist
from rich.console import Console

from prolong.config import load_recipe
from prolong.errors import UserError
from prolong.parallel.mesh import ParallelMesh, init_distributed
from prolong.train.loop import run_stage
from prolong.train.stages import export_dir, export_stage, is_finished, prepare_stage, validate_run


def train(recipe: str, stage: str | None = None, resume: bool = False, max_steps: int | None = None) -> None:
    """Run a recipe's training stages: all in order, or only --stage NAME (a comma list: NAME,NAME).

    One process: `prolong train RECIPE`. Several: `torchrun --nproc_per_node N -m prolong train RECIPE`
    (gloo on CPU, nccl on GPU; across nodes, the same with torchrun's rendezvous flags). Each stage
    starts from the previous stage's export with a fresh LR schedule (and its AdamW state when the
    recipe says carry_optimizer_state), writes checkpoints to OUTPUT_DIR/STAGE/checkpoints, metrics
    to OUTPUT_DIR/STAGE/metrics.jsonl and ends with a Hugging Face export in OUTPUT_DIR/STAGE/export.

    --resume continues an interrupted stage from its latest checkpoint (same data position, LR and
    RNG state) and skips stages that are already finished. --max-steps N shortens every stage to at
    most N steps, with the LR schedule fitted to the shorter stage (demos and tests).
    """
    spec = load_recipe(recipe)
    selected = spec.select_stages(stage)
    init_distributed()
    console = Console()
    try:
        validate_run(spec, selected, dist.get_world_size())
        for current in selected:
            index = spec.stages.index(current)
            if is_finished(spec, current):
                if not resume:
                    raise UserError(
                        f"stage {current.name!r} is already finished ({export_dir(spec, current)}); pass --resume "
                        "to skip finished stages, or delete its directory to train it again"
                    )
                if dist.get_rank() == 0:
                    console.print(f"stage {current.name!r} already finished, skipping")
                continue
            mesh = ParallelMesh.create(current.sequence_parallel)
            run, tokenizer = prepare_stage(spec, index, mesh, resume, max_steps)
            if mesh.is_main:
                console.print(
                    f"stage {current.name!r}: steps {run.start_step}->{run.num_steps}, world {mesh.world_size} "
                    f"(dp {mesh.dp_size} x sp {mesh.sp_size}), {current.sequences_per_step} sequences of "
                    f"{current.seq_len} tokens per step"
                )
            run_stage(run)
            path = export_stage(run, spec, tokenizer)
            if mesh.is_main:
                console.print(f"stage {current.name!r} finished: {path}")
    finally:
        dist.destroy_process_group()
