"""Per-GPU memory of a dry run, by category, from torch's FSDP2 memory tracker.

The tracker (torch.distributed._tools.FSDPMemTracker) counts every tensor storage alive at each
operation and remembers the moment of the peak, split by what the storage is. Its categories, grouped
here as a reader thinks of them:

  parameters       sharded parameters (float32 master weights), gathered ones (compute dtype), buffers
  gradients        sharded gradients (float32) and unsharded ones before their reduce-scatter
  optimizer state  AdamW's exp_avg and exp_avg_sq (float32, sharded) alive at the peak
  activations      what forward (and checkpoint recomputation) keeps for backward
  temporaries      what backward allocates outside recomputation: gradients of activations, kernel
                   workspaces; and what the optimizer step allocates beyond its state (foreach AdamW's
                   temporary copy of the state)
  communication    all-gather outputs and reduce-scatter inputs of FSDP2

`optimizer_state` is the state after the step, so it can be checked by hand: two float32 tensors per
sharded parameter. The optimizer step tags everything it allocates as optimizer state; what it holds at
the peak beyond the persistent state is moved to temporaries here.

Host memory (what offload keeps off the GPU: checkpointed layer inputs, and with parameter offload the
sharded parameters, gradients and optimizer state) is reported apart, at its own peak, in
`host_categories`: parameters, gradients, optimizer state and activations (the offloaded inputs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch.distributed._tools.fsdp2_mem_tracker import _FSDPRefType

GIB = 2**30

_GROUPS: dict[str, tuple[_FSDPRefType, ...]] = {
    "parameters": (_FSDPRefType.SHARDED_PARAM, _FSDPRefType.UNSHARDED_PARAM, _FSDPRefType.BUFFER),
    "gradients": (_FSDPRefType.SHARDED_GRAD, _FSDPRefType.UNSHARDED_GRAD),
    "activations": (_FSDPRefType.ACT, _FSDPRefType.INP),
    "temporaries": (_FSDPRefType.TEMP,),
    "communication": (_FSDPRefType.ALL_GATHER, _FSDPRefType.REDUCE_SCATTER),
}
CATEGORIES: tuple[str, ...] = (
    "parameters",
    "gradients",
    "optimizer_state",
    "activations",
    "temporaries",
    "communication",
)


@dataclass
class MemoryPlan:
    """Bytes per GPU at the peak of the optimizer step, by category; `peak` is their sum."""

    parameters: int
    gradients: int
    optimizer_state: int
    activations: int
    temporaries: int
    communication: int
    peak: int
    phase: str  # forward, backward or optimizer step: where the peak happened
    host: int = 0  # peak bytes held in host memory (offloaded tensors), per GPU
    tracker: dict[str, int] = field(default_factory=dict)  # the tracker's own categories at the peak
    host_categories: dict[str, int] = field(default_factory=dict)  # `host` by category (HOST_CATEGORIES)

    @classmethod
    def from_tracker(
        cls,
        snapshot: dict[Any, int],
        optimizer_state: int,
        host_snapshot: dict[Any, int] | None = None,
        host_optimizer_state: int = 0,
        phase: str = "backward",
    ) -> MemoryPlan:
        """From the tracker's peak snapshots of the device and of the host, and the optimizer state (on
        each) after the step."""
        groups = {name: sum(snapshot.get(kind, 0) for kind in kinds) for name, kinds in _GROUPS.items()}
        at_peak = snapshot.get(_FSDPRefType.OPT, 0)
        state = min(optimizer_state, at_peak)
        groups["temporaries"] += at_peak - state
        tracker = {str(kind.value): snapshot.get(kind, 0) for kind in _FSDPRefType}
        host_snapshot = host_snapshot or {}
        host = host_snapshot.get("Total", 0)
        host_groups = {
            "parameters": host_snapshot.get(_FSDPRefType.SHARDED_PARAM, 0),
            "gradients": host_snapshot.get(_FSDPRefType.SHARDED_GRAD, 0),
            "optimizer_state": min(host_optimizer_state, host_snapshot.get(_FSDPRefType.OPT, 0)),
        }
        host_groups["activations"] = host - sum(host_groups.values())
        return cls(
            **groups,
            optimizer_state=state,
            peak=snapshot.get("Total", 0),
            phase=phase,
            host=host,
            tracker=tracker,
            host_categories=host_groups if host else {},
        )

    def categories(self) -> dict[str, int]:
        """The six categories in display order (they sum to `peak`)."""
        return {name: getattr(self, name) for name in CATEGORIES}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
