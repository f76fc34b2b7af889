"""Publishing outputs atomically: the one way prolong writes a file or directory that others read
(packed shards, tokenized caches, tokenizers, checkpoints, exports, eval results, synthetic data).

The output is written into a private temporary sibling, every file in it is fsynced, and it is renamed
into place (then the parent directory is fsynced): a reader sees the old complete output or the new
complete one, never a partial one, even after a crash or a power cut.

Leftovers of writers that died. A temporary sibling of NAME is `.NAME.tmp-HOST-PID-RANDOM`, unique per
writer even when several nodes share the filesystem, with a lock file `.NAME.tmp-HOST-PID-RANDOM.lock`
beside it that its writer holds (flock) from before the temporary exists until after the rename. The next
writer of NAME removes a leftover only when it can prove the owner dead: the leftover was made on this
host and its lock is free. The kernel releases a flock when its process ends however it ends (SIGKILL,
OOM), and on one host that holds on any filesystem and in any pid namespace, unlike a `/proc/PID` test
(pids are per host and per container). Across hosts a free lock proves nothing (NFS mounted `nolock`
and Lustre with `localflock` keep locks per client), so leftovers of other hosts are left alone: they
are hidden and never read, and `leftovers()` lists them. Directories owned by one run at a time (a
stage's checkpoints) can be swept whole with `remove_leftovers(..., owned=True)`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Self

_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
# .NAME.tmp-HOST-PID-RANDOM, and .NAME.old-... for the output a publish replaced
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-(?P<tag>(?P<host>[A-Za-z0-9._]+)-\d+-[0-9a-f]{8})(?P<lock>\.lock)?")


def _writer_tag() -> str:
    return f"{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"


def fsync_tree(path: Path) -> None:
    """fsync every file and directory under `path` (a file: just it)."""
    if path.is_dir():
        for sub, _, files in os.walk(path):
            for name in files:
                _fsync(Path(sub) / name)
            _fsync(Path(sub))
    else:
        _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno != errno.EINVAL:  # some filesystems cannot sync a directory: nothing to do
            raise
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class Staged:
    """A private temporary sibling of `final` to write a file or build a directory in.

    `path` is where to write; `publish()` syncs it and renames it to `final` (replacing what is
    there); `discard()` removes it. As a context manager it publishes on success, discards on error.
    """

    def __init__(self, final: str | os.PathLike, is_dir: bool) -> None:
        self.final = Path(final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(self.final.parent, self.final.name)
        tag = _writer_tag()
        self.path = self.final.with_name(f".{self.final.name}.tmp-{tag}")
        self._old = self.final.with_name(f".{self.final.name}.old-{tag}")
        self._lock_path = self.final.with_name(f"{self.path.name}.lock")
        # the lock exists and is held before the temporary does, so a free lock means a dead owner
        self._lock_fd: int | None = os.open(self._lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        # no locks on this filesystem: our leftovers are then kept, never removed by guess
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if is_dir:
            self.path.mkdir()

    def publish(self) -> Path:
        """Make the written output visible under `final`, durably; returns `final`. On an error (a full
        disk at fsync) the temporary is removed and what was at `final` stays."""
        try:
            fsync_tree(self.path)
            if self.path.is_dir() and self.final.is_dir():
                os.replace(self.final, self._old)  # a directory cannot be renamed over a non-empty one
                try:
                    os.replace(self.path, self.final)
                except BaseException:
                    os.replace(self._old, self.final)
                    raise
                shutil.rmtree(self._old, ignore_errors=True)
            else:
                os.replace(self.path, self.final)
            _fsync(self.final.parent)
        except BaseException:
            self.discard()
            raise
        self._release()
        return self.final

    def discard(self) -> None:
        """Drop what was written; `final` is untouched."""
        _remove(self.path)
        self._release()

    def _release(self) -> None:
        if self._lock_fd is not None:
            self._lock_path.unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if self._lock_fd is None:
            return  # already published or discarded
        if kind is None:
            self.publish()
        else:
            self.discard()


def staged_dir(final: str | os.PathLike) -> Staged:
    """An empty private directory to build `final` in: `with staged_dir(out) as s: write into s.path`."""
    return Staged(final, is_dir=True)


@contextmanager
def atomic_file(final: str | os.PathLike, mode: str = "w", newline: str | None = None) -> Iterator[IO]:
    """An open file (text: UTF-8) that becomes `final` when the block ends without an error."""
    with Staged(final, is_dir=False) as staged:
        binary = "b" in mode
        encoding = None if binary else "utf-8"
        with open(staged.path, mode, encoding=encoding, newline=newline) as file:
            yield file


def write_text(final: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `final` atomically."""
    with atomic_file(final) as file:
        file.write(text)
    return Path(final)


def write_json(final: str | os.PathLike, value: Any, **dumps: Any) -> Path:
    """Write `value` as JSON to `final` atomically (`dumps` go to json.dumps, e.g. indent=2)."""
    return write_text(final, json.dumps(value, **dumps))


def _owner_is_dead(lock_path: Path) -> bool:
    """True when the lock file's lock can be taken (its holder has ended). Takes and drops it."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return False  # no lock to test: nothing proves the owner dead
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False  # held (alive), or no locks on this filesystem (cannot tell)
    finally:
        os.close(fd)


def leftovers(parent: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Temporary siblings and lock files of writers under `parent`, of `name` or of any output."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    return sorted(
        path
        for path in parent.iterdir()
        if (match := _LEFTOVER.fullmatch(path.name)) and (name is None or match["name"] == name)
    )


def remove_leftovers(parent: str | os.PathLike, name: str | None = None, owned: bool = False) -> list[Path]:
    """Remove the leftovers of dead writers under `parent` (of `name`, or all); returns those removed.

    A leftover goes when it was made on this host and its lock is free. With `owned=True` (the caller's
    run owns `parent`, e.g. a stage's checkpoints, so no other writer can be alive) every one goes.
    """
    removed = []
    for path in leftovers(parent, name):
        match = _LEFTOVER.fullmatch(path.name)
        assert match is not None
        lock = path.with_name(f".{match['name']}.tmp-{match['tag']}.lock")
        if owned or (match["host"] == _HOST and _owner_is_dead(lock)):
            if not match["lock"]:
                _remove(path)
            removed.append(path)
    for path in removed:  # lock files last: each guarded its temporaries until they were gone
        if path.name.endswith(".lock"):
            path.unlink(missing_ok=True)
    return [p for p in removed if not p.name.endswith(".lock")]
