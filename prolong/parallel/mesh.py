"""The one object that owns the process group and the data-parallel x sequence-parallel device mesh.

Rank layout: global rank = dp_rank * sp + sp_rank, so the ranks of one sequence-parallel group are
neighbours (on one node, where the all-to-all is fast). FSDP shards parameters over every rank (a flat
1-D mesh of the whole world): sequence-parallel ranks compute gradients of different tokens, so they
need the same reduction as data-parallel ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from prolong.errors import UserError
from prolong.layout import validate_sequence_parallel

DEFAULT_TIMEOUT_S = 600.0  # the recipe's training.collective_timeout_s; also NCCL's own default
_timeout = timedelta(seconds=DEFAULT_TIMEOUT_S)  # of the process group, for the mesh's axis groups too


def init_distributed(timeout_s: float = DEFAULT_TIMEOUT_S, trace_dir: Path | None = None) -> None:
    """Join the torchrun process group, or make a one-process group when run without torchrun.

    gloo on CPU, nccl on GPU. A one-process group keeps one code path (FSDP2 and distributed
    checkpoint both want a process group), at no cost. `timeout_s` bounds every collective and the
    start-up rendezvous, so a worker whose peers never come (a restart that went wrong) stops with a
    message instead of waiting. On GPUs with `trace_dir`, NCCL's flight recorder keeps the last
    collectives of each rank and dumps them to `trace_dir/rank_N` on a timeout (variables a user
    already set win); the choice is printed.
    """
    global _timeout
    if dist.is_initialized():
        return
    timeout = _timeout = timedelta(seconds=timeout_s)
    # on GPUs, gloo too for the collectives of host tensors: with training.offload_parameters the
    # gradient shards live in host memory and the gradient norm is all-reduced there
    backend = "cuda:nccl,cpu:gloo" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available() and trace_dir is not None:
        _enable_flight_recorder(trace_dir)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        try:
            store = _attempt_store(timeout)
            if store is None:
                dist.init_process_group(backend, timeout=timeout)
            else:
                rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
                dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
        except dist.DistError as error:
            raise UserError(
                f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}: the process group did not form within "
                f"{timeout_s:g} s (training.collective_timeout_s): {error}. Another worker did not start or "
                f"cannot reach {os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}."
            ) from error
    else:
        if torch.cuda.is_available():
            torch.cuda.set_device(0)
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)


def _attempt_store(timeout: timedelta) -> dist.Store | None:
    """torchrun's shared store, with keys scoped to this restart attempt (None: not under the agent store).

    torchrun's agent keeps one store across restarts (TORCHELASTIC_USE_AGENT_STORE), and the default
    group keys its members' addresses without the attempt, so restarted workers read the dead ones'
    addresses: gloo then retries or hangs in init_process_group (pytorch/pytorch#135712; here once for
    more than 10 minutes, with no message). The restart count agrees on one node; across nodes it can
    disagree (each agent counts its own), so multi-node runs should also export
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for torchrun, which gives every attempt a fresh store.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    restarts, nodes = (int(os.environ.get(k) or 0) for k in ("TORCHELASTIC_MAX_RESTARTS", "GROUP_WORLD_SIZE"))
    if restarts and nodes > 1 and os.environ.get("RANK") == "0":
        print("note: torchrun --max-restarts on several nodes: export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
              "before torchrun, so that restarted workers get a fresh store (pytorch/pytorch#135712)", flush=True)
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout
    )
    return dist.PrefixStore(f"prolong/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


FLIGHT_RECORDER_ENV = {
    "TORCH_FR_BUFFER_SIZE": "2000",  # collectives remembered per rank (older name: TORCH_NCCL_TRACE_BUFFER_SIZE)
    "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",  # write them out when the watchdog sees a timeout
}


def _enable_flight_recorder(trace_dir: Path) -> None:
    """Set NCCL's flight-recorder variables (unless set) before the process group exists."""
    settings = {**FLIGHT_RECORDER_ENV, "TORCH_FR_DUMP_TEMP_FILE": f"{trace_dir}/rank_"}
    chosen = {name: os.environ.setdefault(name, value) for name, value in settings.items()}
    trace_dir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("RANK", "0") == "0":
        print("NCCL flight recorder: " + " ".join(f"{k}={v}" for k, v in chosen.items()), flush=True)


@dataclass
class ParallelMesh:
    """Process layout of a run: `dp` data-parallel groups of `sp` sequence-parallel ranks."""

    mesh: DeviceMesh  # 2-D, axes ("dp", "sp")
    fsdp_mesh: DeviceMesh  # 1-D over all ranks, axis "fsdp"
    device: torch.device
    last_collective: str = "none yet"  # what a hang message names; set before each collective we issue

    @classmethod
    def create(cls, sequence_parallel: int = 1, device_type: str | None = None) -> ParallelMesh:
        """Initialise torch.distributed (if needed) and build the dp x sp mesh.

        device_type: None picks CUDA when available, else CPU; `prolong plan` asks for "cpu" (it runs on
        fake CPU tensors, also on a GPU node)."""
        init_distributed()
        world = dist.get_world_size()
        validate_sequence_parallel(sequence_parallel, world)
        if device_type is None:
            device_type = "cuda" if torch.cuda.is_available() else "cpu"
        on_cuda = device_type == "cuda"
        device = torch.device("cuda", torch.cuda.current_device()) if on_cuda else torch.device("cpu")
        # axis groups made here (not by init_device_mesh) so that they get the run's timeout too
        layout = torch.arange(world).reshape(world // sequence_parallel, sequence_parallel)
        dp_group = _axis_group([column.tolist() for column in layout.T])
        sp_group = _axis_group([row.tolist() for row in layout])
        mesh = DeviceMesh.from_group([dp_group, sp_group], device_type, mesh=layout, mesh_dim_names=("dp", "sp"))
        fsdp_mesh = init_device_mesh(device_type, (world,), mesh_dim_names=("fsdp",))
        return cls(mesh=mesh, fsdp_mesh=fsdp_mesh, device=device)

    @property
    def world_size(self) -> int:
        return dist.get_world_size()

    @property
    def rank(self) -> int:
        return dist.get_rank()

    @property
    def is_main(self) -> bool:
        """Rank 0 writes exports, metrics and plots."""
        return self.rank == 0

    @property
    def dp_size(self) -> int:
        return self.mesh.size(0)

    @property
    def dp_rank(self) -> int:
        return self.mesh.get_local_rank("dp")

    @property
    def sp_size(self) -> int:
        return self.mesh.size(1)

    @property
    def sp_rank(self) -> int:
        return self.mesh.get_local_rank("sp")

    @property
    def dp_group(self) -> dist.ProcessGroup:
        return self.mesh.get_group("dp")

    @property
    def sp_group(self) -> dist.ProcessGroup:
        return self.mesh.get_group("sp")

    def all_reduce_sum(self, values: list[float], axis: str | None = None) -> list[float]:
        """Sum floats over one mesh axis ("dp", "sp") or over all ranks (None), in float64."""
        self.last_collective = f"all_reduce of {len(values)} numbers over {axis or 'all ranks'}"
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        group = None if axis is None else self.mesh.get_group(axis)
        dist.all_reduce(tensor, group=group)
        return tensor.tolist()

    def barrier(self) -> None:
        self.last_collective = "barrier"
        dist.barrier()


def _axis_group(rank_lists: list[list[int]]) -> dist.ProcessGroup:
    """The group of this rank among `rank_lists` (every rank creates all of them, in order)."""
    if len(rank_lists[0]) == dist.get_world_size():
        return dist.group.WORLD  # type: ignore[return-value]
    mine = None
    for ranks in rank_lists:
        group = dist.new_group(ranks, timeout=_timeout)
        if dist.get_rank() in ranks:
            mine = group
    assert mine is not None
    return mine
