"""torchrun worker for the restart test: forms prolong's process group and mesh; in the first attempt
rank 1 SIGKILLs itself after one all_reduce, so torchrun restarts the group, whose workers must form
their group again (from torchrun's shared store: pytorch/pytorch#135712) and reduce."""

from __future__ import annotations

import os
import signal
import sys
import time

import torch
import torch.distributed as dist

from prolong.parallel.mesh import ParallelMesh, init_distributed

if __name__ == "__main__":
    attempt, rank = int(os.environ["TORCHELASTIC_RESTART_COUNT"]), int(os.environ["RANK"])
    init_distributed(timeout_s=float(sys.argv[1]))
    mesh = ParallelMesh.create(2)
    total = torch.ones(1)
    dist.all_reduce(total, group=mesh.sp_group)
    if attempt == 0:
        if rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(120)  # torchrun stops this survivor and restarts both
    print(f"attempt {attempt} rank {rank}: {total.item():g}", flush=True)
    dist.destroy_process_group()
