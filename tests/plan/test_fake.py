"""The fake world counts what a real run allocates: checked against the same tracker on real tensors."""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker, _FSDPRefType
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from prolong.plan.dry_run import initialise_optimizer_state
from prolong.plan.fake import DryRunTracker, OverLimit, fake_process_group, fake_tensors

WORLD = 4


def _sharded_model() -> torch.nn.Module:
    """Three FSDP2-sharded linear layers built on the meta device (as the planner builds its model)."""
    mesh = init_device_mesh("cpu", (WORLD,))
    with torch.device("meta"):
        model = torch.nn.Sequential(*(torch.nn.Linear(256, 256, bias=False) for _ in range(3)))
    for layer in model:
        fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _clip_and_adamw_peaks(mode: str) -> dict[str, int]:
    """Peak bytes of gradient clipping and of a foreach AdamW step on FSDP2 (DTensor) parameters.

    mode "real": real tensors; "fake": prolong's fake_tensors(); "plain": a bare FakeTensorMode."""
    plain = functools.partial(FakeTensorMode, allow_non_fake_inputs=True)  # meta tensors in, as ours
    context = {"real": contextlib.nullcontext, "fake": fake_tensors, "plain": plain}[mode]
    peaks = {}
    # DTensor caches its shape propagation per op schema: start every mode from an empty cache
    propagator = DTensor._op_dispatcher.sharding_propagator
    propagator.propagate_op_sharding.cache_clear()
    type(propagator)._propagate_tensor_meta_cached.cache_clear()
    with fake_process_group(WORLD):
        model = _sharded_model()
        with context():
            model.to_empty(device="cpu")
            optimizer = torch.optim.AdamW(model.parameters(), foreach=True)
            initialise_optimizer_state(model, optimizer, keep_gradients=True)  # as the planner does
            for name, work in (
                ("clip", lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)),
                ("adamw", optimizer.step),
            ):
                tracker = FSDPMemTracker(model, optimizer)
                with tracker:
                    work()
                snapshot = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
                peaks[name] = snapshot["Total"]
                peaks[f"{name}_opt"] = snapshot[_FSDPRefType.OPT]
    return peaks


def test_fake_tensors_count_what_real_tensors_allocate() -> None:
    """DTensor's shape propagation reruns ops on global-shape fake tensors; in a bare FakeTensorMode the
    tracker counts them (a full copy of every gradient in clipping, of the state in AdamW: the
    "optimizer state larger than 2x the sharded parameters" of a first probe). fake_tensors() gives the
    propagation its own fake mode, and the dry run then counts exactly what real tensors allocate."""
    # the bare mode first: DTensor keeps caches of its shape propagation beyond the ones cleared above
    plain, real, fake = (_clip_and_adamw_peaks(mode) for mode in ("plain", "real", "fake"))
    assert fake == real
    assert plain["clip"] > real["clip"] and plain["adamw_opt"] > real["adamw_opt"]
    # by hand: AdamW's state is 2 float32 tensors per sharded parameter and a float32 step per
    # parameter; the foreach step adds one temporary copy of exp_avg_sq (its square root)
    state = 2 * 3 * 256 * 256 * 4 // WORLD + 3 * 4
    assert real["adamw_opt"] == state + 3 * 256 * 256 * 4 // WORLD


def test_dry_run_tracker_host_bookkeeping_and_unknown_scalars() -> None:
    """Ops on real tensors run for real and are not counted; a fake scalar reads 0; the limit stops."""
    with fake_process_group(WORLD):
        model = _sharded_model()
        _bookkeeping_and_limit(model)


def _bookkeeping_and_limit(model: torch.nn.Module) -> None:
    host = torch.arange(1000)  # a real host tensor, like the batches the dry run builds before
    with fake_tensors():
        model.to_empty(device="cpu")
        tracker = DryRunTracker(model, limit=10**9)
        with tracker:
            mask = host != 3  # the batch's bookkeeping on the host
            assert int(mask.sum()) == 999
            assert float(torch.ones(8).sum()) == 0.0  # a fake value is unknown: 0
            before = tracker.get_tracker_snapshot()[torch.device("cpu")]["Total"]
            kept = torch.empty(1000, dtype=torch.float32)
            after = tracker.get_tracker_snapshot()[torch.device("cpu")]["Total"]
        assert isinstance(kept, FakeTensor) and after - before == 4000
        assert not isinstance(mask, FakeTensor)
        with pytest.raises(OverLimit), DryRunTracker(model, limit=1000):
            torch.empty(10**6)


def test_only_distinct_tiles_and_chunks_on_fake_tensors_keep_the_peak(monkeypatch) -> None:
    """Dry runs compute the first and a shorter last tile of the tiled MLP and norms and of the chunked
    loss only (tiled_mlp.tile_starts): the peak is the same as computing them all, to a few scalars."""
    import dataclasses

    from prolong.model import loss
    from prolong.parallel import tiled_mlp
    from prolong.plan.dry_run import dry_run
    from prolong.plan.measure import VALIDATION_CASES, validation_recipe
    from prolong.plan.model_config import plan_model

    case = dataclasses.replace(VALIDATION_CASES[0], seq_len=17 * 1024, tiled_mlp=True)
    recipe = validation_recipe(case)
    recipe = recipe.model_copy(update={"training": recipe.training.model_copy(update={"tiled_norms": True})})
    config = plan_model(recipe).config

    def plan():
        return dry_run(recipe, recipe.stages[0], case.world_size, config, target="cpu").memory

    distinct = plan()
    every = lambda x, num_tokens, tile: list(range(0, num_tokens, tile))  # noqa: E731
    monkeypatch.setattr(tiled_mlp, "tile_starts", every)
    monkeypatch.setattr(loss, "tile_starts", every)
    every_tile = plan().categories()
    # the same, but for the loss's running sum: one float32 scalar per chunk skipped (512-byte blocks)
    skipped_chunks = case.seq_len // recipe.training.loss_chunk_tokens - 2
    assert 0 <= every_tile.pop("temporaries") - distinct.categories()["temporaries"] <= 512 * skipped_chunks
    assert every_tile == {k: v for k, v in distinct.categories().items() if k != "temporaries"}
