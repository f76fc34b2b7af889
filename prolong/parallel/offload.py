"""Activation-checkpoint offload: each decoder layer's checkpointed input lives in host memory between
its forward and its backward.

With activation checkpointing a layer keeps only its input ([T/sp, hidden]) for the recompute, which
over all layers is what remains of the activations at long T (32 layers x 512K x 4096 x bf16 = 128 GiB
for Llama-8B). Non-reentrant `torch.utils.checkpoint` saves that input as a saved tensor of the
checkpoint itself, outside the checkpointed region, so saved-tensor hooks
(`torch.autograd.graph.saved_tensors_hooks`) set around the checkpoint call see exactly those inputs and
nothing inside the layer (the checkpoint's own hooks take over inside).

On CUDA the device-to-host copy runs on a side stream after the forward produced the input, into pinned
host memory, so it overlaps the next layer's forward; in backward, unpacking layer i's input starts the
host-to-device copy of layer i-1's input on the side stream (a prefetch, overlapping layer i's
backward), and the compute stream waits for a copy only when it needs it. On CPU the same hooks run:
the "host copy" is a plain copy on the same device and the fetch returns it, so the bookkeeping and the
math are exercised by the CPU tests (bitwise equal with and without offload).
CUDA-only calls (streams, events, pinned memory, record_stream) follow the documented torch.cuda API.

Planning (`prolong plan`, fake tensors): no streams, and the host copy of a fake tensor on the CPU
device (the planner's stand-in for the GPU) is kept on the meta device, so a memory tracker of the
device does not count it; `stats` says how many host bytes the offload holds.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils.checkpoint import checkpoint


@dataclass(eq=False)
class _HostCopy:
    """One offloaded tensor: its host copy, and its device copy once fetched back."""

    host: torch.Tensor
    device: torch.device
    group: int  # the checkpoint call (decoder layer and micro-batch) that saved it
    offloaded: Any = None  # CUDA event: the device-to-host copy is done
    fetched: torch.Tensor | None = None  # device copy (prefetched or fetched on demand)
    fetch_done: Any = None  # CUDA event: the host-to-device copy is done
    unpacked: bool = False  # handed back to autograd (a prefetch must not fetch it again)


@dataclass
class OffloadStats:
    """Host bytes held by offloaded activations (now and the most at once): what the host must hold."""

    host_bytes: int = 0
    peak_host_bytes: int = 0
    tensors: int = 0  # tensors offloaded so far

    def add(self, nbytes: int) -> None:
        self.host_bytes += nbytes
        self.peak_host_bytes = max(self.peak_host_bytes, self.host_bytes)
        self.tensors += 1


@dataclass
class ActivationOffloader:
    """A checkpoint function (for HF's `_gradient_checkpointing_func`) that offloads the saved inputs.

    One offloader serves all decoder layers of a model: each `checkpoint` call is one group (one layer
    of one micro-batch), and unpacking a group prefetches the group saved just before it.
    """

    device: torch.device
    stats: OffloadStats = field(default_factory=OffloadStats)

    def __post_init__(self) -> None:
        # streams and pinned memory only where CUDA really runs (a planner's fake CUDA tensors have none)
        self._cuda = self.device.type == "cuda" and torch.cuda.is_available()
        # one side stream for both directions: a prefetch is then ordered after its offload
        self._stream = torch.cuda.Stream(self.device) if self._cuda else None
        self._groups: dict[int, list[weakref.ref[_HostCopy]]] = {}
        self._group_ids = itertools.count()
        self._current: int | None = None

    def checkpoint(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """torch.utils.checkpoint (non-reentrant) of `function`, its saved inputs held on the host."""
        self._current = next(self._group_ids)
        self._groups[self._current] = []
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            out = checkpoint(function, *args, use_reentrant=False, **kwargs)
        if not self._groups[self._current]:
            del self._groups[self._current]  # nothing was saved (no grad): nothing to prefetch
        self._current = None
        return out

    # -- pack: forward --------------------------------------------------------------------------------

    def _pack(self, tensor: torch.Tensor) -> _HostCopy:
        group = self._current
        assert group is not None, "saved tensors are packed only inside checkpoint()"
        if self._stream is not None and tensor.device.type == "cuda":
            stream = self._stream
            host = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=True)
            compute = torch.cuda.current_stream(tensor.device)
            stream.wait_stream(compute)  # the tensor is written by work queued on the compute stream
            with torch.cuda.stream(stream):
                host.copy_(tensor, non_blocking=True)
                done = torch.cuda.Event()
                done.record(stream)
            # the caching allocator must not hand the tensor's memory out again before the copy ran
            tensor.record_stream(stream)
        elif isinstance(tensor, FakeTensor) and tensor.device.type == "cpu":
            host = torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")  # planning: see the top
            done = None
        else:
            host = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu")
            host.copy_(tensor)
            done = None
        copy = _HostCopy(host=host, device=tensor.device, group=group, offloaded=done)
        self._groups[group].append(weakref.ref(copy, self._forget))
        nbytes = host.numel() * host.element_size()
        self.stats.add(nbytes)
        weakref.finalize(copy, self._release, nbytes)
        return copy

    def _release(self, nbytes: int) -> None:
        self.stats.host_bytes -= nbytes

    def _forget(self, dead: weakref.ref[_HostCopy]) -> None:
        """A saved tensor was freed (backward done, or a forward never run backward): drop its entry."""
        for group_id, refs in list(self._groups.items()):
            if dead in refs:
                refs.remove(dead)
                if not refs and group_id != self._current:
                    del self._groups[group_id]
                return

    # -- unpack: backward -----------------------------------------------------------------------------

    def _unpack(self, copy: _HostCopy) -> torch.Tensor:
        self._fetch(copy)
        self._prefetch_before(copy.group)
        tensor = copy.fetched
        assert tensor is not None, "_fetch always sets the device copy"
        if copy.fetch_done is not None:
            compute = torch.cuda.current_stream(copy.device)
            compute.wait_event(copy.fetch_done)
            tensor.record_stream(compute)  # allocated on the side stream, used and freed on this one
        # the recompute owns it now (freed after the layer); the host copy stays for a second backward
        copy.fetched, copy.fetch_done, copy.unpacked = None, None, True
        return tensor

    def _fetch(self, copy: _HostCopy) -> None:
        """Start (or find started) the host-to-device copy of `copy`."""
        if copy.fetched is not None:
            return
        if self._stream is not None and copy.device.type == "cuda":
            stream = self._stream
            with torch.cuda.stream(stream):
                stream.wait_event(copy.offloaded)
                copy.fetched = copy.host.to(copy.device, non_blocking=True)
                copy.fetch_done = torch.cuda.Event()
                copy.fetch_done.record(stream)
        elif copy.host.device.type == "meta":
            copy.fetched = torch.empty(copy.host.shape, dtype=copy.host.dtype, device=copy.device)
        else:
            copy.fetched = copy.host.to(copy.device)  # same device: the host copy itself

    def _prefetch_before(self, group: int) -> None:
        """Fetch the group saved just before `group`: the next decoder layer backward will recompute."""
        earlier = [g for g in self._groups if g < group]
        if earlier:
            for ref in self._groups[max(earlier)]:
                copy = ref()
                if copy is not None and not copy.unpacked:
                    self._fetch(copy)
