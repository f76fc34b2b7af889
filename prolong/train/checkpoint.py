"""Distributed checkpoints: model, optimizer, step (= data position and LR schedule), RNG states.

A checkpoint is written by every rank (torch.distributed.checkpoint, each rank its own shards) into a
temporary sibling of `step_NNNNNNNN/` that rank 0 made (prolong.publish), and published under that name
by rank 0 once all ranks are done, so a run killed while writing leaves only a hidden temporary that is
ignored (and removed by the next write); the previous checkpoint stays usable. Only the last `keep` checkpoints are kept.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from prolong.parallel.mesh import ParallelMesh
from prolong.publish import staged_dir

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"step_(\d{8})")


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (a `.tmp` directory is never complete)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.fullmatch(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under `root`, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    mesh: ParallelMesh,
    keep: int,
) -> Path:
    """Write the checkpoint after `step` optimizer steps atomically; returns its directory."""
    final = root / checkpoint_name(step)
    staged = staged_dir(final) if mesh.is_main else None
    if mesh.is_main:
        remove_legacy_partials(root)
    shared = [str(staged.path) if staged else None]
    dist.broadcast_object_list(shared, src=0)  # every rank writes its shards into rank 0's temporary
    tmp = Path(shared[0])
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp)
    # each rank its own RNG state (plain tensors and ints: loadable with weights_only=True)
    torch.save(_rng_state(), tmp / f"rng_rank{mesh.rank}.pt")
    mesh.barrier()
    if staged is not None:
        # the state file is written last: a directory without it is not a checkpoint
        (tmp / STATE_FILE).write_text(json.dumps({**trainer_state, "step": step}, indent=2), encoding="utf-8")
        staged.publish()
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old)
    mesh.barrier()
    return final


def remove_legacy_partials(root: Path) -> None:
    """Drop `step_N.tmp` directories that writers before prolong.publish left when killed."""
    for partial in root.glob("step_*.tmp"):
        shutil.rmtree(partial, ignore_errors=True)


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, mesh: ParallelMesh
) -> dict:
    """Restore model, optimizer and this rank's RNG state from `path`; returns the trainer state."""
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng_file = path / f"rng_rank{mesh.rank}.pt"
    if rng_file.is_file():  # absent when the world size changed: data order does not depend on it
        _set_rng_state(torch.load(rng_file, weights_only=True))
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))


def load_optimizer_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Carry AdamW moments from another stage's checkpoint into `optimizer` (weights are not touched).

    Step counts come along too, so Adam's bias correction continues rather than restarting.
    """
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"optim": optim_state}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=state["optim"])
