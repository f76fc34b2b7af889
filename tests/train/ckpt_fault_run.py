"""`prolong ARGS...` with one fault injected, for the fault tests (runs alone or as a torchrun worker):

    python ckpt_fault_run.py FAULT prolong-args...

FAULT is one of
    none                      no fault
    enospc-checkpoint:STEP    fsync of a file of checkpoint STEP fails: No space left on device
    enospc-export             fsync of a file of the stage export fails: No space left on device
    kill-async-save:STEP      SIGKILL this process while the background thread checksums checkpoint STEP
    stall:RANK:STEP:SECONDS   rank RANK sleeps SECONDS before step STEP (1-based), as a hung rank would

The injection sits where the real failure would surface (NFS and quotas report ENOSPC at fsync), so
the code under test is prolong's own, unchanged.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time


def _fail_fsync(marker: str) -> None:
    real = os.fsync

    def fsync(fd: int) -> None:
        if marker in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    os.fsync = fsync


def inject(fault: str) -> None:
    kind, _, arg = fault.partition(":")
    if kind == "enospc-checkpoint":
        _fail_fsync(f"/.step_{int(arg):08d}.tmp-")
    elif kind == "enospc-export":
        _fail_fsync("/.export.tmp-")
    elif kind == "kill-async-save":
        from prolong.train import checkpoint

        real_digest = checkpoint.file_digest

        def digest(path):
            if f".step_{int(arg):08d}.tmp-" in str(path):
                os.kill(os.getpid(), signal.SIGKILL)
            return real_digest(path)

        checkpoint.file_digest = digest
    elif kind == "stall":
        from prolong.train import loop

        rank, step, seconds = (float(x) for x in arg.split(":"))
        real_step = loop.train_step

        def train_step(model, optimizer, batches, mesh, lr, grad_clip):
            train_step.calls += 1
            if mesh.rank == rank and train_step.calls == step:
                time.sleep(seconds)
            return real_step(model, optimizer, batches, mesh, lr, grad_clip)

        train_step.calls = 0
        loop.train_step = train_step
    elif kind != "none":
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    inject(sys.argv[1])
    from prolong.cli import main

    sys.exit(main(sys.argv[2:]))
