"""The fake world a dry run happens in: N ranks in one process, tensors without data.

- A fake process group of world size N (torch.testing._internal.distributed.fake_pg): every collective
  returns at once, so this process plays rank 0 of N and sees exactly rank 0's shapes.
- FakeTensorMode: tensors have shapes, dtypes and devices but no storage, so an 8B model costs nothing
  and an operator costs microseconds.
- `DryRunTracker`: torch's FSDP2 memory tracker (torch.distributed._tools.FSDPMemTracker), which counts
  every tensor storage that exists by category, plus what a dry run needs from the step's own Python:
  operations on real tensors (the batch's bookkeeping on the host: valid-token counts, document
  boundaries) run for real and are not counted, and a scalar read from a fake tensor (the loss and the
  gradient norm, which only feed the log line) reads 0.

The device of the fake tensors is the CPU ("fake CPU"), standing for the GPU: with a CPU-only torch,
FSDP2 on a fake CUDA mesh asks the CUDA runtime for streams and the current device and fails, so the
same dry run could not run on a laptop and on a GPU node. What differs between the two devices is set
explicitly by the planner to what a CUDA run does (bf16 compute, foreach AdamW). Host memory is
represented by the "meta" device (`HOST_DEVICE`): tensors moved there are tracked on their own.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch._guards import TracingContext, tracing
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker, _FSDPRefType
from torch.distributed._tools.mem_tracker import _UpdateType
from torch.distributed.tensor import DTensor
from torch.testing._internal.distributed.fake_pg import FakeStore
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils.weak import WeakIdKeyDictionary

from prolong.errors import UserError

PLAN_DEVICE = torch.device("cpu")  # stands for the GPU in a dry run
HOST_DEVICE = torch.device("meta")  # stands for host memory (offloaded tensors) in a dry run
# what FSDP2's CPUOffloadPolicy keeps in host memory: the sharded parameters, their gradients and so
# AdamW's state (and the optimizer step's temporaries, which the tracker tags as optimizer state)
HOST_KINDS = frozenset({_FSDPRefType.SHARDED_PARAM, _FSDPRefType.SHARDED_GRAD, _FSDPRefType.OPT})
_aten = torch.ops.aten
_prim_device = torch.ops.prim.device.default


@contextlib.contextmanager
def fake_process_group(world_size: int) -> Iterator[None]:
    """A fake default process group of `world_size` ranks (this process is rank 0), destroyed after."""
    if world_size < 1:
        raise UserError(f"--world-size must be at least 1, got {world_size}")
    if dist.is_initialized():
        raise UserError(
            "a dry run needs its own fake process group, and this process already has one; plan before "
            "joining the real group (prolong train does)"
        )
    forget_mesh_caches()
    dist.init_process_group("fake", rank=0, world_size=world_size, store=FakeStore())
    try:
        yield
    finally:
        dist.destroy_process_group()
        forget_mesh_caches()


def forget_mesh_caches() -> None:
    """Clear DTensor's caches of sharding decisions, which hold device meshes.

    A DeviceMesh compares equal to any mesh of the same layout, whatever its process groups and this
    process's rank in them, so a decision cached in the fake world (where this process is rank 0)
    would be reused by a real mesh of the same shape on another rank, with the fake mesh inside (a
    wrong shard offset, a dead group). These are the caches torch 2.13 keeps across calls; some
    strategy caches inside registered ops cannot be reached, so a real run must not share a process
    with a dry run of the same mesh shape (`prolong train` plans in a subprocess).
    """
    from torch.distributed.tensor._collective_utils import MeshTopoInfo
    from torch.distributed.tensor._redistribute import _gen_transform_infos
    from torch.distributed.tensor._sharding_prop import ShardingPropagator

    DTensor._op_dispatcher.sharding_propagator.propagate_op_sharding.cache_clear()
    ShardingPropagator._propagate_tensor_meta_cached.cache_clear()
    _gen_transform_infos.cache_clear()
    MeshTopoInfo.build_from_mesh.cache_clear()


@contextlib.contextmanager
def fake_tensors() -> Iterator[FakeTensorMode]:
    """FakeTensorMode for the dry run, with a second fake mode for DTensor's shape propagation.

    DTensor infers output shapes by running the op once more on fake tensors of the *global* shape,
    in the fake mode it detects (torch.distributed.tensor._sharding_prop, `detect_fake_mode`). Left to
    detect ours, that rerun would be counted as memory by the tracker: for example a full unsharded copy
    of every gradient during gradient clipping, or of the optimizer state during a foreach AdamW step
    (tests/plan/test_fake.py shows both). A TracingContext is what `detect_fake_mode` consults first, so
    the propagation gets a fake mode of its own that the tracker ignores.
    """
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode, tracing(TracingContext(FakeTensorMode())):
        yield mode


@dataclass(frozen=True)
class LiveStorage:
    """One storage alive on the device when a dry run crossed its limit (`explain`)."""

    nbytes: int
    kind: str  # the tracker's category
    origin: str  # the op that made it and the module it ran in
    shape: tuple[int, ...]  # of the tensor it was made for
    dtype: str


class OverLimit(Exception):
    """Raised from inside a tracked step once it needs more memory than the tracker's limit."""

    def __init__(self, peak: int) -> None:
        super().__init__(f"the step needs more than {peak} bytes")
        self.peak = peak


def _unknown_scalar(tensor: torch.Tensor) -> Any:
    if tensor.dtype == torch.bool:
        return False
    return 0.0 if tensor.is_floating_point() else 0


class DryRunTracker(FSDPMemTracker):
    """FSDPMemTracker for a step on fake tensors whose host-side Python reads some values.

    On top of the tracker (dispatch goes to it first):
    - an op whose tensors are all real (never fake) is the host's bookkeeping of the batch: it runs for
      real, outside the fake mode and uncounted (in a GPU run it happens on the host too);
    - `.item()` of a fake tensor without a known value reads 0 (loss and gradient norm: log values only);
    - `tensor.device` queries and aten views create no storage: they skip the tracker's accounting (a
      view's storage is its base's, already counted), which makes the dry run about a third faster.
    """

    def __init__(
        self,
        mod: torch.nn.Module,
        optm: torch.optim.Optimizer | None = None,
        limit: int | None = None,
        offload_parameters: bool = False,
        explain: bool = False,
    ) -> None:
        super().__init__(mod, optm)
        self.peak_phase = "none"  # where the peak of the device it stands for happened
        self._backward_began = False
        self.limit = limit  # stop the step (OverLimit) once the device holds more than this
        # with parameter offload (FSDP2's CPUOffloadPolicy) the sharded state lives in host memory: on
        # the fake CPU device FSDP2's copies to the host are no-ops, so it is counted there by kind
        self._host_kinds = HOST_KINDS if offload_parameters else frozenset()
        # explain: where each storage was made (op, module, shape), and what lives when the limit is hit
        self._origins: WeakIdKeyDictionary | None = WeakIdKeyDictionary() if explain else None
        self._dispatching = "?"
        self.live_at_limit: list[LiveStorage] = []

    def _device_of(self, device: torch.device, reftype: Any) -> torch.device:
        return HOST_DEVICE if device == PLAN_DEVICE and reftype in self._host_kinds else device

    def _update_snap(self, u_type, winfo, old_mem_consumed=None, old_reftype=None) -> None:
        # MemTracker keeps one snapshot per device; a storage counts on the device of its kind
        if not self._host_kinds:
            return super()._update_snap(u_type, winfo, old_mem_consumed, old_reftype)
        device = winfo.device
        try:
            if u_type is _UpdateType.REF:
                before, after = self._device_of(device, old_reftype), self._device_of(device, winfo.reftype)
                if before != after:  # re-tagged as a kind kept elsewhere: leaves one device, joins the other
                    new = winfo.reftype
                    winfo.device, winfo.reftype = before, old_reftype
                    super()._update_snap(_UpdateType.DEL, winfo)
                    winfo.device, winfo.reftype = after, new
                    super()._update_snap(_UpdateType.ADD, winfo)
                    return None
            winfo.device = self._device_of(device, winfo.reftype)
            return super()._update_snap(u_type, winfo, old_mem_consumed, old_reftype)
        finally:
            winfo.device = device

    def _fsdp_state_pre_forward(self, fsdp_mod, orig_fsdp_state_pre_fw):
        # The tracker keeps per-module statistics of one iteration and refuses a second forward of the
        # root; with gradient accumulation a step has several. Module statistics are only kept for
        # display; the peak and its snapshot, which the plan reads, are kept across the reset.
        inner = super()._fsdp_state_pre_forward(fsdp_mod, orig_fsdp_state_pre_fw)
        if fsdp_mod is not self._root_mod:
            return inner

        @functools.wraps(inner)
        def root_pre_forward(*args: Any, **kwargs: Any) -> Any:
            if not self._mod_tracker.is_bw and fsdp_mod in self.memory_tracking:
                self.reset_mod_stats()
            return inner(*args, **kwargs)

        return root_pre_forward

    def _update_peak_stats(self, peak_state) -> None:
        if self._mod_tracker.is_bw:  # called for every op: remembers that backward has begun
            self._backward_began = True
        before = self._peak_mem.get(PLAN_DEVICE, 0)
        super()._update_peak_stats(peak_state)
        peak = self._peak_mem.get(PLAN_DEVICE, 0)
        if peak > before:
            self.peak_phase = self._phase()
            if self.limit is not None and peak > self.limit:
                if self._origins is not None:
                    self.live_at_limit = self._live_storages()
                raise OverLimit(peak)

    def _phase(self) -> str:
        if self._in_opt:
            return "optimizer step"
        if self._mod_tracker.is_bw:
            return "backward"
        if self._mod_tracker.parents - {"Global"}:
            return "forward"
        if self._backward_began:
            return "gradient clipping"  # the only tensor work between backward and the optimizer
        return "step start"  # nothing ran yet: parameters, gradients and optimizer state alone

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if any(issubclass(t, DTensor) for t in types):
            return NotImplemented  # DTensor first unwraps to its local tensors, then they come here
        if func is _prim_device:
            # answered here: on fake tensors this query is most of all dispatches (autograd asks per grad)
            return args[0].fake_device if isinstance(args[0], FakeTensor) else func(*args, **kwargs)
        tensors = [a for a in pytree.arg_tree_leaves(*args, **kwargs) if isinstance(a, torch.Tensor)]
        if tensors and not any(isinstance(t, FakeTensor) for t in tensors):
            with _disable_current_modes():
                return func(*args, **kwargs)
        if getattr(func, "is_view", False) and func.namespace == "aten":
            return func(*args, **kwargs)
        if func is _aten._local_scalar_dense.default and args[0].constant is None:
            return _unknown_scalar(args[0])
        if self._origins is None:
            return super().__torch_dispatch__(func, types, args, kwargs)
        self._dispatching = f"{func.__name__} in {self._module()}"
        out = super().__torch_dispatch__(func, types, args, kwargs)
        for tensor in pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage() not in self._origins:
                origin = f"{func.__name__} in {self._module()}"
                self._origins[tensor.untyped_storage()] = (origin, tuple(tensor.shape), tensor.dtype)
        return out

    def _module(self) -> str:
        """The innermost module running (layer numbers as *), and whether in backward."""
        name = max(self._mod_tracker.parents, key=len)
        name = re.sub(r"\.\d+\.", ".*.", name)
        return f"{name} ({'backward' if self._mod_tracker.is_bw else 'forward'})"

    def _live_storages(self) -> list[LiveStorage]:
        """Every storage the device holds now, with where it was made (explain mode)."""
        assert self._origins is not None, "origins are recorded in explain mode only"
        live = []
        for storage, (winfo, _) in list(self._WINFO.items()):
            if self._device_of(winfo.device, winfo.reftype) != PLAN_DEVICE or not winfo.mem_consumed:
                continue
            origin, shape, dtype = self._origins.get(storage, (f"before the step, or the op running: {self._dispatching}", (), None))
            live.append(LiveStorage(winfo.mem_consumed, str(winfo.reftype.value), origin, shape, str(dtype)))
        return live
