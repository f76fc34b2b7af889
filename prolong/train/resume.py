"""Resuming a stage: whether to (training.resume, --resume, an elastic restart), from which checkpoint
(the newest that verifies, or --resume-from), and the checks that make a resume exact or refuse it:
same schedule, same data shards. A changed world layout is allowed and said in one line.

Under `torchrun --max-restarts N` the agent restarts every worker when one dies, with
TORCHELASTIC_RESTART_COUNT > 0; `training.resume: auto` (the default) then continues from the newest
checkpoint that verifies, and a first start never silently continues an old run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prolong.config import Recipe, StageSpec
from prolong.data.mixture import shard_path
from prolong.errors import UserError
from prolong.parallel.mesh import ParallelMesh
from prolong.train.checkpoint import (
    STATE_FILE,
    data_changes,
    data_fingerprint,
    describe_layout_change,
    load_checkpoint,
    resumable_checkpoint,
    supersede_newer,
)
from prolong.train.loop import StageRun


def resolve_resume(setting: str, flag: bool | None) -> tuple[bool, str]:
    """(resume?, why) from `training.resume` and the --resume/--no-resume flag (which wins)."""
    if flag is not None:
        return flag, "--resume" if flag else "--no-resume"
    if setting == "auto":
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)
        if restarts:
            run_id = os.environ.get("TORCHELASTIC_RUN_ID", "?")
            return True, f"training.resume: auto, torchrun restart {restarts} of run {run_id}"
        return False, "training.resume: auto, not a torchrun restart"
    return setting == "always", f"training.resume: {setting}"


def stage_shards(recipe: Recipe, stage: StageSpec) -> dict[str, Path]:
    """The shard directory of each mixture component of `stage`, by DOMAIN@DOC_LEN."""
    shards = {}
    for entry in stage.mixture:
        doc_len = entry.doc_len or stage.seq_len
        shards[f"{entry.domain}@{doc_len}"] = shard_path(recipe.data.shard_dir, stage.name, entry.domain, doc_len)
    return shards


def initial_trainer_state(recipe: Recipe, stage: StageSpec, num_steps: int, mesh: ParallelMesh) -> dict[str, Any]:
    """What every checkpoint of the stage records beside the step: schedule, layout, data fingerprints."""
    return {
        "stage": stage.name,
        "num_steps": num_steps,
        "world_size": mesh.world_size,
        "dp_size": mesh.dp_size,
        "sp_size": mesh.sp_size,
        "data_shards": data_fingerprint(stage_shards(recipe, stage)),
    }


def resume_stage(run: StageRun, resume_from: str | None = None) -> bool:
    """Restore `run` from its checkpoint to resume from; False when the stage has none.

    Refused (UserError): another schedule length, another stage's checkpoint, changed or vanished data
    shards (naming them), or an explicit --resume-from that does not verify.
    """
    mesh = run.mesh

    def say(message: str) -> None:
        if mesh.is_main:
            print(message, flush=True)

    path = resumable_checkpoint(run.checkpoint_dir, mesh, resume_from)
    if path is None:
        return False
    saved = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    if saved.get("stage", run.stage.name) != run.stage.name:
        raise UserError(f"{path} is a checkpoint of stage {saved['stage']!r}, not of {run.stage.name!r}")
    if saved["num_steps"] != run.num_steps:
        raise UserError(
            f"{path} belongs to a {saved['num_steps']}-step schedule, this run has {run.num_steps} steps; "
            "resume with the same --max-steps"
        )
    changes = data_changes(saved.get("data_shards", {}), run.trainer_state["data_shards"])
    if changes:
        raise UserError(
            f"cannot resume from {path}: the data changed since it was written: " + "; ".join(changes)
            + ". Resuming would silently change the data order: restore those shards, or train the stage "
            "from its start (delete its checkpoints)."
        )
    load_checkpoint(path, run.model, run.optimizer, mesh)
    run.start_step = saved["step"]
    run.trainer_state.update(bad_steps_in_a_row=saved.get("bad_steps_in_a_row", 0))
    layout = describe_layout_change(saved, mesh)
    say(f"resuming stage {run.stage.name!r} from {path} (step {saved['step']})" + (f"; {layout}" if layout else ""))
    if resume_from is not None and mesh.is_main:
        moved = supersede_newer(run.checkpoint_dir, path)
        if moved:
            say(f"newer checkpoints moved aside to {moved[0].parent}: " + ", ".join(p.name for p in moved))
    return True
