"""The one object that owns the process group and the data-parallel x sequence-parallel device mesh.

Rank layout: global rank = dp_rank * sp + sp_rank, so the ranks of one sequence-parallel group are
neighbours (on one node, where the all-to-all is fast). FSDP shards parameters over every rank (a flat
1-D mesh of the whole world): sequence-parallel ranks compute gradients of different tokens, so they
need the same reduction as data-parallel ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from prolong.errors import UserError


def validate_sequence_parallel(
    sp: int, world_size: int, num_attention_heads: int, num_key_value_heads: int | None = None
) -> None:
    """Refuse an SP degree that cannot work, before anything starts; the message says how to fix it."""
    if sp < 1:
        raise UserError(f"sequence_parallel={sp} must be at least 1")
    if world_size % sp:
        raise UserError(
            f"sequence_parallel={sp} does not divide the world size {world_size}; launch a multiple of "
            f"{sp} processes (torchrun --nproc_per_node) or lower sequence_parallel"
        )
    if num_attention_heads % sp:
        raise UserError(
            f"sequence_parallel={sp} does not divide the model's {num_attention_heads} attention heads "
            "(Ulysses gives each rank whole heads); choose a divisor of the head count"
        )
    if num_key_value_heads is not None and num_attention_heads % num_key_value_heads:
        raise UserError(
            f"{num_attention_heads} query heads are not a multiple of {num_key_value_heads} KV heads"
        )


def init_distributed() -> None:
    """Join the torchrun process group, or make a one-process group when run without torchrun.

    gloo on CPU, nccl on GPU. A one-process group keeps one code path (FSDP2 and distributed
    checkpoint both want a process group), at no cost.
    """
    if dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    else:
        if torch.cuda.is_available():
            torch.cuda.set_device(0)
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


@dataclass
class ParallelMesh:
    """Process layout of a run: `dp` data-parallel groups of `sp` sequence-parallel ranks."""

    mesh: DeviceMesh  # 2-D, axes ("dp", "sp")
    fsdp_mesh: DeviceMesh  # 1-D over all ranks, axis "fsdp"
    device: torch.device

    @classmethod
    def create(cls, sequence_parallel: int = 1) -> ParallelMesh:
        """Initialise torch.distributed (if needed) and build the dp x sp mesh."""
        init_distributed()
        world = dist.get_world_size()
        if world % sequence_parallel:
            raise UserError(f"sequence_parallel={sequence_parallel} does not divide the world size {world}")
        if torch.cuda.is_available():
            device_type, device = "cuda", torch.device("cuda", torch.cuda.current_device())
        else:
            device_type, device = "cpu", torch.device("cpu")
        mesh = init_device_mesh(
            device_type, (world // sequence_parallel, sequence_parallel), mesh_dim_names=("dp", "sp")
        )
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
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        group = None if axis is None else self.mesh.get_group(axis)
        dist.all_reduce(tensor, group=group)
        return tensor.tolist()

    def barrier(self) -> None:
        dist.barrier()
