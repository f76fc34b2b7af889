"""The atomic-publish helper: outputs appear whole or not at all, and only leftovers of writers that are
provably dead (this host, lock free) are removed; a live writer's or another host's are kept."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from prolong import publish


def test_file_and_directory_are_published_whole(tmp_path: Path) -> None:
    publish.write_json(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    with publish.staged_dir(tmp_path / "out") as staged:
        (staged.path / "f.txt").write_text("one")
        assert not (tmp_path / "out").exists()  # invisible until the block ends
    with publish.staged_dir(tmp_path / "out") as staged:  # replaces a directory that exists
        (staged.path / "g.txt").write_text("two")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["g.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "out"]  # no temporaries, no locks


def test_an_error_keeps_the_previous_output(tmp_path: Path) -> None:
    publish.write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), publish.atomic_file(tmp_path / "a.txt") as file:
        file.write("new, half")
        raise RuntimeError("writer failed")
    assert (tmp_path / "a.txt").read_text() == "old"
    assert publish.leftovers(tmp_path) == []


WRITER = """
import sys, time
from prolong import publish
staged = publish.staged_dir(sys.argv[1])
(staged.path / "part").write_text("partial")
print("ready", flush=True)
time.sleep(600)
"""


def _writer(final: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WRITER), str(final)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def test_leftovers_of_a_killed_writer_go_those_of_a_live_one_stay(tmp_path: Path) -> None:
    final = tmp_path / "shard"
    dead, alive = _writer(final), _writer(final)
    try:
        dead.send_signal(signal.SIGKILL)
        dead.wait()
        assert len(publish.leftovers(tmp_path, "shard")) == 4  # two temporaries, two lock files
        removed = publish.remove_leftovers(tmp_path, "shard")
        assert len(removed) == 1 and str(dead.pid) in removed[0].name
        kept = publish.leftovers(tmp_path, "shard")
        assert len(kept) == 2 and all(str(alive.pid) in p.name for p in kept)
        with publish.staged_dir(final) as staged:  # the next writer publishes beside the live one
            (staged.path / "done").write_text("")
        assert (final / "done").is_file() and len(publish.leftovers(tmp_path, "shard")) == 2
    finally:
        alive.kill()
        alive.wait()
    assert publish.remove_leftovers(tmp_path) and publish.leftovers(tmp_path) == []


def test_another_hosts_leftover_is_kept_unless_the_directory_is_owned(tmp_path: Path) -> None:
    other = tmp_path / ".shard.tmp-othernode-123-0badc0de"
    other.mkdir()
    (tmp_path / ".shard.tmp-othernode-123-0badc0de.lock").write_text("")  # free lock: proves nothing there
    assert publish.remove_leftovers(tmp_path, "shard") == []
    assert other.is_dir()
    assert publish.remove_leftovers(tmp_path, owned=True) == [other]
    assert publish.leftovers(tmp_path) == []


def test_a_failed_sync_removes_the_temporary_and_keeps_what_was_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with publish.staged_dir(tmp_path / "out") as staged:
        (staged.path / "old.txt").write_text("old")

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"), publish.staged_dir(tmp_path / "out") as staged:
        (staged.path / "new.txt").write_text("new")
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["old.txt"]
    assert publish.leftovers(tmp_path) == []
