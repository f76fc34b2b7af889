"""Distributed checkpoints you can trust: model, optimizer, step (= data position and LR schedule), RNG.

One checkpoint, `step_NNNNNNNN/`:

    __R_K.distcp, .metadata   torch.distributed.checkpoint shards (each rank writes its own)
    rng_rankR.pt              each rank's RNG states (plain tensors and ints: weights_only loadable)
    trainer_state.json        step, schedule length, world layout, data shard fingerprints
    manifest.json             size and xxh3-64 checksum of every file above; written last

Writing. Rank 0 makes a private temporary sibling (prolong.publish); every rank writes its shards into
it and checksums its own files; rank 0 gathers the checksums, writes the manifest and renames the
directory into place. A kill at any moment leaves the previous checkpoints as they were.
`Checkpointer` writes synchronously or, with `training.async_checkpoint`, in the background: the state
is copied to host memory on the training thread (torch.distributed.checkpoint.async_save) and written,
checksummed, published and purged by a background thread over a gloo group of its own while the loop
trains on; the next checkpoint first waits for the previous one. An OSError (disk full, read-only
directory) stops the run naming the path and errno, and the temporary is removed.

Reading. A checkpoint is loadable only when its manifest verifies (sizes on every rank, checksums split
over the ranks); `resumable_checkpoint` reports a damaged one with its file and what is wrong, and
falls back to the newest checkpoint that verifies.
"""

from __future__ import annotations

import errno
import json
import random
import re
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import xxhash
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from prolong.errors import UserError
from prolong.parallel.mesh import ParallelMesh
from prolong.publish import remove_leftovers, staged_dir, write_json

STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
_NAME = re.compile(r"step_(\d{8})")
_BLOCK = 8 << 20  # bytes read at a time when checksumming
_SMALL_FILE = 16 << 20  # data shard files up to this size are checksummed, larger ones compared by size


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (disk full, no permission): the run stops, earlier ones are intact."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def checkpoint_dirs(root: Path) -> list[Path]:
    """Every published `step_NNNNNNNN` directory under `root`, oldest first (verified or not)."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if _NAME.fullmatch(p.name) and p.is_dir()), key=lambda p: p.name)


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoints under `root` that have a manifest, oldest first (not checksummed: see verify)."""
    return [p for p in checkpoint_dirs(root) if (p / MANIFEST).is_file()]


def latest_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint under `root` that has a manifest, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def checkpoint_bytes_per_rank(num_parameters: int, world_size: int) -> int:
    """Bytes each rank writes per checkpoint: float32 master weights and AdamW's two float32 moments,
    sharded over all ranks by FSDP (for `prolong plan`; RNG, metadata and manifest files are small)."""
    return -(-12 * num_parameters // world_size)


# ---------------------------------------------------------------------------------------- checksums
def file_digest(path: Path) -> str:
    """xxh3-64 of a file's bytes, hex (about 8 GB/s: a checkpoint's cost is reading it)."""
    digest = xxhash.xxh3_64()
    with open(path, "rb") as file:
        while block := file.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _record(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "xxh3_64": file_digest(path)}


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of checkpoint `path`; UserError when it is missing or unreadable."""
    file = path / MANIFEST
    if not file.is_file():
        raise UserError(f"{file}: missing (the checkpoint was not completely written, or was cut when copied)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not a mapping")
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{file}: unreadable ({error})") from None
    return manifest


def verify_checkpoint(path: Path, share: tuple[int, int] = (0, 1)) -> list[str]:
    """What is wrong with checkpoint `path` ([] when it verifies), one line per problem.

    Sizes of all files are checked; checksums of every n-th file from i with share=(i, n), so that
    n ranks together read the checkpoint once.
    """
    try:
        files = read_manifest(path)["files"]
    except UserError as error:
        return [str(error)]
    problems = []
    index, count = share
    for position, (name, expected) in enumerate(sorted(files.items())):
        file = path / name
        if not file.is_file():
            problems.append(f"{file}: missing")
        elif (size := file.stat().st_size) != expected["size"]:
            problems.append(f"{file}: {size} bytes, the manifest says {expected['size']}")
        elif position % count == index and (digest := file_digest(file)) != expected["xxh3_64"]:
            problems.append(f"{file}: checksum {digest}, the manifest says {expected['xxh3_64']}")
    return problems


def verify_on_all_ranks(path: Path, mesh: ParallelMesh) -> list[str]:
    """verify_checkpoint with the checksums split over the ranks; every rank gets all problems."""
    mine = verify_checkpoint(path, (mesh.rank, mesh.world_size))
    gathered: list[list[str]] = [[] for _ in range(mesh.world_size)]
    dist.all_gather_object(gathered, mine)
    return sorted({problem for problems in gathered for problem in problems})


# ---------------------------------------------------------------------------------------- choosing
def find_checkpoint(root: Path, spec: str) -> Path:
    """The checkpoint `--resume-from` names: a step number (of this stage) or a checkpoint directory."""
    if spec.isdigit():
        path = root / checkpoint_name(int(spec))
        if not path.is_dir():
            found = ", ".join(p.name for p in checkpoint_dirs(root)) or "none"
            raise UserError(f"--resume-from {spec}: no checkpoint {path} (this stage has: {found})")
        return path
    path = Path(spec)
    if not (path / MANIFEST).is_file() and not (path / STATE_FILE).is_file():
        raise UserError(f"--resume-from {spec}: not a checkpoint directory (no {MANIFEST} in it)")
    return path


def resumable_checkpoint(root: Path, mesh: ParallelMesh, resume_from: str | None = None) -> Path | None:
    """The checkpoint to resume from: `resume_from` when given, else the newest one that verifies.

    A damaged or incomplete checkpoint is reported (file and problem; printed by rank 0) and skipped;
    an explicitly chosen one that does not verify is refused. None when there is no checkpoint.
    """
    if resume_from is not None:
        path = find_checkpoint(root, resume_from)
        problems = verify_on_all_ranks(path, mesh)
        if problems:
            raise UserError(f"{path} does not verify: " + "; ".join(problems))
        return path
    damaged: list[tuple[Path, list[str]]] = []
    for path in reversed(checkpoint_dirs(root)):
        problems = verify_on_all_ranks(path, mesh)
        if not problems:
            if damaged and mesh.is_main:
                print(
                    f"resuming from {path.name}, the newest checkpoint that verifies; skipped "
                    + "; ".join(f"{bad.name} ({probs[0]}{f' and {len(probs) - 1} more' if len(probs) > 1 else ''})"
                                for bad, probs in damaged),
                    flush=True,
                )
            return path
        damaged.append((path, problems))
    if damaged:
        listing = "; ".join(f"{bad.name}: {probs[0]}" for bad, probs in damaged)
        raise UserError(
            f"no checkpoint in {root} verifies ({listing}); restore one (prolong checkpoint verify {root}), "
            "or delete the directory to train the stage from its start"
        )
    return None


def supersede_newer(root: Path, chosen: Path) -> list[Path]:
    """Move checkpoints newer than `chosen` (an explicit --resume-from) aside, so that a later automatic
    resume cannot pick one of the abandoned run; returns where they went. Rank 0 only."""
    newer = [p for p in checkpoint_dirs(root) if p.name > chosen.name and p.parent == chosen.parent]
    if not newer:
        return []
    aside = root / f"superseded-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    aside.mkdir()
    return [Path(shutil.move(p, aside / p.name)) for p in newer]


# ------------------------------------------------------------------------------------- data shards
def data_fingerprint(shards: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """{name: {file: size or [size, xxh3_64]}} of each shard directory: small files (meta, offsets,
    indexes) are checksummed, token files compared by size; enough to tell a rebuilt or cut shard."""
    fingerprint = {}
    for name, path in shards.items():
        files = {}
        for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
            size = file.stat().st_size
            files[str(file.relative_to(path))] = [size, file_digest(file)] if size <= _SMALL_FILE else size
        fingerprint[name] = {"path": str(path), "files": files}
    return fingerprint


def data_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """How the data shards differ from those a checkpoint was written with ([] when unchanged)."""
    changes = []
    for name, before in saved.items():
        now = current.get(name)
        if now is None or not now["files"]:
            changes.append(f"shard {name} ({before['path']}) is gone")
            continue
        for file in sorted(set(before["files"]) | set(now["files"])):
            old, new = before["files"].get(file), now["files"].get(file)
            if old != new:
                what = "is gone" if new is None else "is new" if old is None else f"changed ({old} -> {new})"
                changes.append(f"shard {name}: {Path(now['path']) / file} {what}")
    return changes


# ------------------------------------------------------------------------------------------ writing
@dataclass
class _Job:
    """One checkpoint on its way to disk."""

    step: int
    tmp: Path
    final: Path
    rng: dict[str, Any]
    trainer_state: dict[str, Any]


def _oserror_in(error: BaseException) -> OSError | None:
    """The OSError behind `error`: itself, its cause, or a rank's failure inside a CheckpointException."""
    pending, seen = [error], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError):
            return current
        if isinstance(current, CheckpointException):
            pending += [failure for failure, _ in current.failures.values()]
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
    return None


def describe_write_error(what: str, error: BaseException, where: Path) -> str:
    """"WHAT: cannot write PATH: [Errno N ENAME] message" (PATH: the file the system names, else `where`),
    or the error itself when no OSError is behind it."""
    oserror = _oserror_in(error)
    if oserror is None:
        return f"{what}: {type(error).__name__}: {error}"
    name = errno.errorcode.get(oserror.errno or 0, "?")
    return f"{what}: cannot write {oserror.filename or where}: [Errno {oserror.errno} {name}] {oserror.strerror}"


class Checkpointer:
    """Writes one stage's checkpoints into `root`: synchronously, or in the background (`asynchronous`).

    Construct on every rank at the same point (it makes a gloo group); call `save` on every rank.
    """

    def __init__(
        self, root: Path, mesh: ParallelMesh, keep: int, asynchronous: bool, timeout_s: float
    ) -> None:
        self.root, self.mesh, self.keep, self.asynchronous = root, mesh, keep, asynchronous
        if mesh.is_main:
            root.mkdir(parents=True, exist_ok=True)
            # the stage's checkpoints are written by one run at a time: any temporary is a dead writer's
            remove_leftovers(root, owned=True)
            for legacy in root.glob("step_*.tmp"):  # left by writers before prolong.publish
                shutil.rmtree(legacy, ignore_errors=True)
        # A group of its own: a background save must not interleave with the loop's collectives.
        self.group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
        self._pending: _Background | None = None

    def save(
        self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, trainer_state: dict[str, Any]
    ) -> Path:
        """Checkpoint the state after `step` optimizer steps; returns the directory it will have.

        Synchronous: returns once it is published. Asynchronous: returns once the state is copied to
        host memory; `wait()` (or the next save) surfaces a failure of the background write.
        """
        self.wait()
        final = self.root / checkpoint_name(step)
        job = _Job(step, self._staging_path(final), final, _rng_state(), {**trainer_state, "step": step})
        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optim": optim_state}
        written: Future = Future()
        try:
            if self.asynchronous:
                upload = dcp.async_save(state, checkpoint_id=job.tmp, process_group=self.group)
                self._pending = _Background(self._finish, job, upload)
                return final
            written.set_result(dcp.save(state, checkpoint_id=job.tmp, process_group=self.group))
        except (Exception, CheckpointException) as error:  # noqa: BLE001  (re-raised by _finish on every rank)
            written.set_exception(error)  # _finish coordinates: discards the temporary, raises everywhere
        self._finish(job, written)
        return final

    def wait(self) -> None:
        """Block until the checkpoint in flight (if any) is published; raise what went wrong."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the checkpoint in flight (the stage ends with its last checkpoint published)."""
        self.wait()

    def abandon(self) -> None:
        """Stop waiting for the checkpoint in flight (the run is failing): its daemon thread dies with
        the process, its temporary stays unpublished, and the previous checkpoint is the newest."""
        self._pending = None

    def _staging_path(self, final: Path) -> Path:
        """Rank 0 makes the temporary; every rank learns its path (or the error that prevented it)."""
        shared: list[Any] = [None, None]
        if self.mesh.is_main:
            try:
                self._staged = staged_dir(final)
                shared[0] = str(self._staged.path)
            except OSError as error:
                shared[1] = describe_write_error(f"checkpoint {final.name}", error, final)
        dist.broadcast_object_list(shared, src=0, group=self.group)
        if shared[1] is not None:
            raise CheckpointWriteError(shared[1] + self._intact_note())
        return Path(shared[0])

    def _intact_note(self) -> str:
        last = latest_checkpoint(self.root)
        return f"; the previous checkpoint {last} is intact" if last else "; no earlier checkpoint exists"

    def _finish(self, job: _Job, written: Future) -> None:
        """Every rank: finish writing and checksum its files; rank 0: manifest, publish, purge.
        Runs on the background thread for asynchronous saves; raises CheckpointWriteError on failure."""
        mesh = self.mesh
        records: dict[str, Any] = {}
        failure = None
        try:
            written.result()
            rng_file = job.tmp / f"rng_rank{mesh.rank}.pt"
            torch.save(job.rng, rng_file)
            mine = [rng_file, *job.tmp.glob(f"__{mesh.rank}_*")]  # this rank's shards (DCP names them so)
            records = {p.name: _record(p) for p in mine}
        except (Exception, CheckpointException) as error:  # noqa: BLE001  (every rank must reach the gather)
            failure = describe_write_error(f"checkpoint {job.final.name}", error, job.tmp)
        parts: list[Any] = [None] * mesh.world_size
        dist.all_gather_object(parts, (records, failure), group=self.group)
        failures = [f for _, f in parts if f]
        verdict = failures[0] if failures else None
        if mesh.is_main:
            verdict = verdict or self._publish(job, {k: v for part, _ in parts for k, v in part.items()})
            if verdict is not None:
                self._staged.discard()
        shared = [verdict]
        dist.broadcast_object_list(shared, src=0, group=self.group)
        if shared[0] is not None:
            raise CheckpointWriteError(shared[0] + self._intact_note())

    def _publish(self, job: _Job, files: dict[str, Any]) -> str | None:
        """Rank 0: trainer state, the remaining checksums, the manifest (last), rename, purge old ones."""
        try:
            write_json(job.tmp / STATE_FILE, job.trainer_state, indent=2)
            for file in sorted(job.tmp.iterdir()):
                if file.name not in files:  # .metadata, trainer_state.json, shards named otherwise
                    files[file.name] = _record(file)
            manifest = {"version": MANIFEST_VERSION, "step": job.step, "files": files}
            write_json(job.tmp / MANIFEST, manifest, indent=1, sort_keys=True)
            self._staged.publish()
        except OSError as error:
            return describe_write_error(f"checkpoint {job.final.name}", error, job.tmp)
        for old in list_checkpoints(self.root)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return None


class _Background:
    """A daemon thread running one call; `result()` joins it and re-raises what it raised."""

    def __init__(self, function: Callable[..., None], *args: Any) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(function, *args), name="checkpoint", daemon=True)
        self.thread.start()

    def _run(self, function: Callable[..., None], *args: Any) -> None:
        try:
            function(*args)
        except BaseException as error:  # noqa: BLE001  (handed to the training thread by result())
            self.error = error

    def result(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


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


# ------------------------------------------------------------------------------------------ loading
def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, mesh: ParallelMesh
) -> dict:
    """Restore model, optimizer and (same world size only) this rank's RNG state from `path`;
    returns the trainer state. Verify it first (resumable_checkpoint)."""
    model_state, optim_state = get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    trainer_state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    rng_file = path / f"rng_rank{mesh.rank}.pt"
    # another world size: the data order does not depend on it, and another rank's RNG means nothing here
    if trainer_state.get("world_size") == mesh.world_size and rng_file.is_file():
        _set_rng_state(torch.load(rng_file, weights_only=True))
    return trainer_state


def load_optimizer_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Carry AdamW moments from another stage's checkpoint into `optimizer` (weights are not touched).

    Step counts come along too, so Adam's bias correction continues rather than restarting.
    """
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"optim": optim_state}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=state["optim"])


def describe_layout_change(saved: dict[str, Any], mesh: ParallelMesh) -> str | None:
    """One line saying how the process layout differs from the checkpoint's, or None when it does not."""
    before = (saved.get("world_size"), saved.get("dp_size"), saved.get("sp_size"))
    now = (mesh.world_size, mesh.dp_size, mesh.sp_size)
    if before == now or before[0] is None:
        return None
    return (
        f"world {before[0]} (dp {before[1]} x sp {before[2]}) -> world {now[0]} (dp {now[1]} x sp {now[2]}): "
        "same data order (global sample index), losses equal up to float rounding, RNG states not restored"
    )
