"""The checkpointer on a small model in this process (one gloo rank): manifests that catch damage, the
fallback to the newest checkpoint that verifies, asynchronous saves that copy the state before the loop
moves on, disk-full and permission errors that name the path and errno and leave the previous
checkpoint intact, and data shard fingerprints."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from prolong import publish
from prolong.errors import UserError
from prolong.parallel.mesh import ParallelMesh
from prolong.train import checkpoint as ckpt
from prolong.train.checkpoint import (
    MANIFEST,
    Checkpointer,
    CheckpointWriteError,
    checkpoint_bytes_per_rank,
    data_changes,
    data_fingerprint,
    list_checkpoints,
    load_checkpoint,
    resumable_checkpoint,
    verify_checkpoint,
)


def _model_and_optimizer(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 8)).square().sum().backward()
    optimizer.step()  # moments exist, so the optimizer state is part of the checkpoint
    optimizer.zero_grad()
    return model, optimizer


def _state(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    moments = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    return [p.detach().clone() for p in model.parameters()] + [m.clone() for m in moments]


def _save(root: Path, mesh: ParallelMesh, steps: list[int], asynchronous: bool = False, keep: int = 5):
    model, optimizer = _model_and_optimizer(0)
    saver = Checkpointer(root, mesh, keep=keep, asynchronous=asynchronous, timeout_s=60)
    states = {}
    for step in steps:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * step)
        states[step] = _state(model, optimizer)
        saver.save(step, model, optimizer, {"stage": "s", "num_steps": 10, "world_size": 1})
    saver.close()
    return states


def _load(path: Path, mesh: ParallelMesh) -> tuple[list[torch.Tensor], dict]:
    model, optimizer = _model_and_optimizer(1)  # other weights: everything must come from the checkpoint
    trainer_state = load_checkpoint(path, model, optimizer, mesh)
    return _state(model, optimizer), trainer_state


def test_manifest_lists_every_file_and_loads_back(tmp_path: Path, mesh: ParallelMesh) -> None:
    states = _save(tmp_path, mesh, [1, 2])
    path = tmp_path / "step_00000002"
    manifest = json.loads((path / MANIFEST).read_text())
    on_disk = {p.name for p in path.iterdir()} - {MANIFEST}
    assert set(manifest["files"]) == on_disk and ".metadata" in on_disk and "rng_rank0.pt" in on_disk
    for name, record in manifest["files"].items():
        assert record["size"] == (path / name).stat().st_size
    assert verify_checkpoint(path) == []
    loaded, trainer_state = _load(path, mesh)
    assert trainer_state["step"] == 2
    for a, b in zip(loaded, states[2], strict=True):
        assert torch.equal(a, b)
    assert publish.leftovers(tmp_path) == []


def test_async_save_copies_the_state_before_the_loop_changes_it(tmp_path: Path, mesh: ParallelMesh) -> None:
    model, optimizer = _model_and_optimizer(0)
    expected = _state(model, optimizer)
    saver = Checkpointer(tmp_path, mesh, keep=2, asynchronous=True, timeout_s=60)
    saver.save(3, model, optimizer, {"stage": "s", "num_steps": 10, "world_size": 1})
    with torch.no_grad():  # the loop trains on while the background thread writes
        for p in model.parameters():
            p.mul_(-3.0)
    saver.close()
    assert verify_checkpoint(tmp_path / "step_00000003") == []
    loaded, _ = _load(tmp_path / "step_00000003", mesh)
    for a, b in zip(loaded, expected, strict=True):
        assert torch.equal(a, b)


def test_async_and_sync_checkpoints_hold_the_same_state(tmp_path: Path, mesh: ParallelMesh) -> None:
    _save(tmp_path / "sync", mesh, [1, 2], asynchronous=False)
    _save(tmp_path / "async", mesh, [1, 2], asynchronous=True)
    for step in ("step_00000001", "step_00000002"):
        a, _ = _load(tmp_path / "sync" / step, mesh)
        b, _ = _load(tmp_path / "async" / step, mesh)
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_only_the_last_keep_checkpoints_stay(tmp_path: Path, mesh: ParallelMesh) -> None:
    _save(tmp_path, mesh, [1, 2, 3, 4], asynchronous=True, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]


def test_damage_is_named_and_the_newest_good_checkpoint_is_used(
    tmp_path: Path, mesh: ParallelMesh, capsys: pytest.CaptureFixture
) -> None:
    _save(tmp_path, mesh, [1, 2, 3])
    shard = tmp_path / "step_00000003" / "__0_0.distcp"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: size // 2])  # a copy cut short
    flipped = tmp_path / "step_00000002" / "__0_0.distcp"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    flipped.write_bytes(bytes(data))
    assert verify_checkpoint(tmp_path / "step_00000003") == [f"{shard}: {size // 2} bytes, the manifest says {size}"]
    problems = verify_checkpoint(tmp_path / "step_00000002")
    assert len(problems) == 1 and problems[0].startswith(f"{flipped}: checksum ")

    assert resumable_checkpoint(tmp_path, mesh) == tmp_path / "step_00000001"
    said = capsys.readouterr().out.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("resuming from step_00000001, the newest checkpoint that verifies")
    assert "step_00000003" in said[0] and "__0_0.distcp" in said[0] and "step_00000002" in said[0]

    with pytest.raises(UserError, match="does not verify"):  # an explicit choice is never swapped
        resumable_checkpoint(tmp_path, mesh, resume_from="3")
    assert resumable_checkpoint(tmp_path, mesh, resume_from="1") == tmp_path / "step_00000001"
    assert resumable_checkpoint(tmp_path, mesh, resume_from=str(tmp_path / "step_00000001")).name == "step_00000001"

    (tmp_path / "step_00000001" / MANIFEST).unlink()  # as if the write never finished
    with pytest.raises(UserError, match="no checkpoint in .* verifies .*manifest.json: missing"):
        resumable_checkpoint(tmp_path, mesh)
    shutil.rmtree(tmp_path)
    assert resumable_checkpoint(tmp_path, mesh) is None


def _fail_fsync_under(monkeypatch: pytest.MonkeyPatch, marker: str, code: int) -> None:
    """os.fsync raises `code` for files whose path contains `marker` (a full disk shows up there on NFS)."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if marker in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(code, os.strerror(code))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_full_disk_stops_with_path_and_errno_and_keeps_the_previous_checkpoint(
    tmp_path: Path, mesh: ParallelMesh, monkeypatch: pytest.MonkeyPatch, asynchronous: bool
) -> None:
    model, optimizer = _model_and_optimizer(0)
    saver = Checkpointer(tmp_path, mesh, keep=2, asynchronous=asynchronous, timeout_s=60)
    saver.save(1, model, optimizer, {"stage": "s", "num_steps": 10, "world_size": 1})
    saver.wait()
    _fail_fsync_under(monkeypatch, ".step_00000002.tmp-", errno.ENOSPC)
    with pytest.raises(CheckpointWriteError) as raised:
        saver.save(2, model, optimizer, {"stage": "s", "num_steps": 10, "world_size": 1})
        saver.wait()
    message = str(raised.value)
    assert "checkpoint step_00000002: cannot write" in message and str(tmp_path) in message
    assert "[Errno 28 ENOSPC] No space left on device" in message
    assert f"the previous checkpoint {tmp_path / 'step_00000001'} is intact" in message
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001"]
    assert verify_checkpoint(tmp_path / "step_00000001") == []
    assert publish.leftovers(tmp_path) == []  # the partial write is removed (it would eat the disk)


def test_a_read_only_directory_stops_with_path_and_errno(
    tmp_path: Path, mesh: ParallelMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, optimizer = _model_and_optimizer(0)
    saver = Checkpointer(tmp_path, mesh, keep=2, asynchronous=False, timeout_s=60)
    saver.save(1, model, optimizer, {"stage": "s", "num_steps": 10, "world_size": 1})
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args, **kwargs) -> None:
        if ".step_00000002.tmp-" in self.name:  # root ignores permission bits, so the refusal is simulated
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(CheckpointWriteError, match=r"cannot write .*\.step_00000002\.tmp-.*\[Errno 13 EACCES\]"):
        saver.save(2, model, optimizer, {"stage": "s", "num_steps": 10, "world_size": 1})
    monkeypatch.undo()
    assert verify_checkpoint(tmp_path / "step_00000001") == []
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001"]


def test_leftovers_of_a_dead_run_are_swept_when_the_next_run_starts(tmp_path: Path, mesh: ParallelMesh) -> None:
    _save(tmp_path, mesh, [1])
    (tmp_path / ".step_00000002.tmp-othernode-77-0123abcd").mkdir()  # killed mid-write, any host
    (tmp_path / "step_00000003.tmp").mkdir()  # the name writers used before prolong.publish
    Checkpointer(tmp_path, mesh, keep=2, asynchronous=False, timeout_s=60)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001"]


def test_data_fingerprint_names_a_changed_or_vanished_shard(tmp_path: Path) -> None:
    shard = tmp_path / "books@128"
    shard.mkdir()
    (shard / "meta.json").write_text('{"num_sequences": 3}')
    (shard / "tokens.bin").write_bytes(b"\0" * 64)
    before = data_fingerprint({"books@128": shard})
    assert data_changes(before, data_fingerprint({"books@128": shard})) == []
    (shard / "meta.json").write_text('{"num_sequences": 4}')  # rebuilt from other sources
    changes = data_changes(before, data_fingerprint({"books@128": shard}))
    assert len(changes) == 1 and "books@128" in changes[0] and "meta.json changed" in changes[0]
    shutil.rmtree(shard)
    assert data_changes(before, data_fingerprint({"books@128": shard})) == [f"shard books@128 ({shard}) is gone"]


def test_verify_reads_each_file_once_over_the_ranks(tmp_path: Path, mesh: ParallelMesh, monkeypatch) -> None:
    _save(tmp_path, mesh, [1])
    read: list[str] = []
    real = ckpt.file_digest
    monkeypatch.setattr(ckpt, "file_digest", lambda p: read.append(p.name) or real(p))
    shares = [verify_checkpoint(tmp_path / "step_00000001", (i, 3)) for i in range(3)]
    assert shares == [[], [], []]
    assert sorted(read) == sorted(json.loads((tmp_path / "step_00000001" / MANIFEST).read_text())["files"])


def test_bytes_per_rank_matches_what_a_checkpoint_holds(tmp_path: Path, mesh: ParallelMesh) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 256)).sum().backward()
    optimizer.step()
    saver = Checkpointer(tmp_path, mesh, keep=1, asynchronous=False, timeout_s=60)
    saver.save(1, model, optimizer, {"stage": "s", "num_steps": 1, "world_size": 1})
    written = sum(p.stat().st_size for p in (tmp_path / "step_00000001").glob("*.distcp"))
    expected = checkpoint_bytes_per_rank(sum(p.numel() for p in model.parameters()), 1)
    assert expected <= written <= 1.05 * expected  # plus a few KiB of framing per tensor
