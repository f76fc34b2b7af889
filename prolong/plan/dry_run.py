"""One dry run: a recipe stage built and trained for one optimizer step at its real size, on fake tensors.

The same code as `prolong train` runs, in the same order: the stage's model from its config on the meta
device (`meta_model`), the chunked-loss wrapper and the attention check (`wrap_model`), `parallelize`
with the stage's activation policy (`parallelize_stage`: SP -> activation policies -> FSDP2), AdamW
(`build_optimizer`) and `train_step` (accumulation over micro-batches, clipping, the AdamW update).
What is different is only what a dry run needs: a fake process group of the planned world size, fake
tensors, the GPU attention kernels' stand-in (target "cuda") and the memory tracker around the step.

Two details keep it exact and fast:
- AdamW creates its state at its first step, so the tracked step is the second: the first is taken on
  zero gradients (the state's size does not depend on their values), without a forward.
- With gradient accumulation, micro-batches 2..n all start from the same live tensors: the sharded
  gradients of the earlier micro-batches, which FSDP2 accumulates into. So they all have micro-batch
  2's memory, and the first has less; the dry run runs that last micro-batch only, with the (zero)
  gradients of the warm-up step left in place as "the earlier micro-batches" (tests/plan checks this
  against running two).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch.distributed._tools.fsdp2_mem_tracker import _FSDPRefType
from transformers import PretrainedConfig
from transformers.modeling_layers import GradientCheckpointingLayer

from prolong.config import Recipe, StageSpec, derived_numbers
from prolong.data.format import PackedSequence
from prolong.errors import UserError
from prolong.model.attention import document_attention, register_attention
from prolong.model.batch import PackedBatch
from prolong.parallel.mesh import ParallelMesh
from prolong.parallel.parallelize import materialize
from prolong.plan.attention import plan_attention_kernel, register_plan_attention
from prolong.plan.fake import (
    HOST_DEVICE,
    PLAN_DEVICE,
    DryRunTracker,
    LiveStorage,
    OverLimit,
    fake_process_group,
    fake_tensors,
)
from prolong.plan.memory import GIB, MemoryPlan
from prolong.train.loop import sequence_to_batch, train_step
from prolong.train.schedule import build_optimizer
from prolong.train.stages import compute_dtype, meta_model, parallelize_stage, wrap_model

Target = Literal["cuda", "cpu"]
TARGETS: tuple[str, ...] = ("cuda", "cpu")


@dataclass
class DryRun:
    """What one dry run of a stage found: its layout and the per-GPU memory of its optimizer step."""

    stage: str
    world_size: int
    sequence_parallel: int
    data_parallel: int
    grad_accumulation: int  # micro-batches per optimizer step on each rank (as derived from the recipe)
    seq_len: int
    tokens_per_gpu: int  # tokens of one micro-batch on one GPU (seq_len / sequence_parallel)
    parameters: int  # of the whole model
    activation_policy: str
    attention: str
    target: str
    notes: list[str]
    memory: MemoryPlan
    seconds: float
    complete: bool = True  # False: stopped once over `limit` (the peak is then a lower bound)
    live_at_limit: list[LiveStorage] = field(default_factory=list)  # explain: the device's storages then


def plan_batch(stage: StageSpec, sp: int) -> PackedBatch:
    """The batch that costs a stage the most memory: one document over the whole sequence.

    A document that spans every rank's slice makes Ulysses exchange (when documents fit in slices it
    skips both all-to-alls); SFT sequences get a full loss mask, which changes no buffer size."""
    tokens = np.zeros(stage.seq_len, dtype=np.uint32)
    lengths = np.array([stage.seq_len], dtype=np.int32)
    mask = np.ones(stage.seq_len, dtype=bool) if stage.kind == "sft" else None
    return sequence_to_batch(PackedSequence(tokens, lengths, mask), stage.attention, sp)


def _planned_recipe(recipe: Recipe, target: Target, notes: list[str]) -> Recipe:
    """The recipe with the settings a dry run can execute (the chunked loss: liger is a Triton kernel)
    and, for a GPU plan, no CPU autocast."""
    choice = recipe.training.loss_kernel
    if choice == "liger" or (choice == "auto" and target == "cuda"):
        notes.append(
            f"training.loss_kernel: {choice}: planned with the chunked loss; on a GPU with liger-kernel "
            "installed the run uses liger's fused loss, whose buffers differ"
        )
    update: dict[str, object] = {"loss_kernel": "chunked"}
    if target == "cuda" and "cpu_compute_dtype" in type(recipe.training).model_fields:
        update["cpu_compute_dtype"] = "float32"  # a CPU-only setting: a GPU run computes in model.dtype
    training = recipe.training.model_copy(update=update)
    return recipe.model_copy(update={"training": training})


def initialise_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, keep_gradients: bool
) -> None:
    """Take AdamW's first step on zero gradients: it creates the state the tracked step then holds.
    keep_gradients: leave the gradients, as earlier micro-batches of an accumulated step leave theirs.

    One tensor at a time (foreach off): the state is the same, and on fake tensors DTensor's shape
    propagation of foreach ops over hundreds of tensors is slow."""
    foreach = [group.get("foreach") for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["foreach"] = False
    for param in model.parameters():
        if param.requires_grad:
            param.grad = torch.zeros_like(param)
    optimizer.step()
    if not keep_gradients:
        optimizer.zero_grad(set_to_none=True)
    for group, value in zip(optimizer.param_groups, foreach, strict=True):
        group["foreach"] = value


def offload_note(model: torch.nn.Module, world_size: int) -> str:
    """What parameter offload moves that the fake CPU device cannot show: FSDP2 copies each module's
    float32 shard to the GPU before casting it to the compute dtype for the all-gather (on the fake
    device that copy is a no-op). Its size is the largest module's shard, plus the next one prefetched."""
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    in_layers = {id(p) for layer in layers for p in layer.parameters()}

    def shard_bytes(params: list[torch.Tensor]) -> int:
        return sum(p.to_local().numel() * 4 if hasattr(p, "to_local") else p.numel() * 4 for p in params)

    layer = max((shard_bytes(list(m.parameters())) for m in layers), default=0)
    root = shard_bytes([p for p in model.parameters() if id(p) not in in_layers])
    return (
        f"parameter offload: not counted, the host-to-GPU copy of each layer's float32 shard before its "
        f"all-gather ({layer / GIB:.2f} GiB per decoder layer, world size {world_size}; the root's "
        f"embeddings and head {root / GIB:.2f} GiB, once at the start of forward)"
    )


def _with_layers(config: PretrainedConfig, layers: int | None) -> PretrainedConfig:
    """A copy of `config` (meta_model writes the stage's rope into it), with `layers` decoder layers."""
    config = copy.deepcopy(config)
    if layers is not None:
        config.num_hidden_layers = layers
        if getattr(config, "layer_types", None):  # per-layer attention kinds (Qwen2, Mistral, ...)
            config.layer_types = config.layer_types[:layers]
    return config


def dry_run(
    recipe: Recipe,
    stage: StageSpec,
    world_size: int,
    config: PretrainedConfig,
    target: Target = "cuda",
    micro_batches: int = 1,
    limit: int | None = None,
    layers: int | None = None,
    explain: bool = False,
) -> DryRun:
    """Build `stage` of `recipe` as `prolong train` does at `world_size` ranks and run one optimizer step
    on fake tensors; returns the per-GPU memory by category (rank 0's, which every rank matches).

    target "cuda": a GPU run (compute in the recipe dtype, foreach AdamW, the flash kernels' memory);
    "cpu": a CPU run (float32, per-tensor AdamW, the CPU attention kernel), for checks against a real
    step on this machine. micro_batches: 1 runs the last micro-batch of the step (see the module
    docstring); n > 1 runs n of them from no gradients (tests compare the two). limit: stop as soon as
    the step holds more bytes than this (a search only needs to know it does not fit). layers: build
    only this many decoder layers: a structural check at full width, length and world size (the CI's;
    a plan's memory needs them all). explain: with a limit, list every storage the device holds when
    the step crosses it, with the op and module that made it (`prolong.plan.peak`). Raises RecipeError or
    UserError naming the recipe key for a stage that cannot run.
    """
    if target not in TARGETS:
        raise UserError(f"unknown plan target {target!r}; choose one of {TARGETS}")
    started = time.perf_counter()
    index = recipe.stages.index(stage)
    numbers = derived_numbers(recipe, world_size, [stage])[0]  # SP divides the world, batch splits
    notes: list[str] = []
    recipe = _planned_recipe(recipe, target, notes)
    stage = recipe.stages[index]
    sp = stage.sequence_parallel
    accumulation = numbers["grad_accumulation"]
    batches = [plan_batch(stage, sp)] * micro_batches  # real host tensors, as in training
    backend = recipe.training.attention_backend
    with fake_process_group(world_size):
        mesh = ParallelMesh.create(sp, device_type=PLAN_DEVICE.type)
        if target == "cuda":
            attn_implementation, kernel = register_plan_attention(), plan_attention_kernel
            attention = "flash varlen kernels (memory stand-in)"
        else:
            attn_implementation, kernel = register_attention(backend), document_attention
            attention = f"{backend} on CPU"
        model = meta_model(
            _with_layers(config, layers), stage, attn_implementation, recipe.model.trust_remote_code
        )
        parameters = sum(p.numel() for p in model.parameters())
        wrapped = wrap_model(recipe, stage, model)
        try:
            policy = parallelize_stage(
                recipe, stage, wrapped, mesh, backend, compute_dtype(recipe, target), kernel
            )
        except UserError as error:
            raise UserError(f"stages.{index} ({stage.name!r}): {error}") from None
        with fake_tensors():
            materialize(wrapped, PLAN_DEVICE, policy.offload_parameters)
            wrapped.train()
            optimizer = build_optimizer(wrapped, recipe.optimizer, stage.lr)
            if target == "cuda" and not policy.offload_parameters:
                # what torch.optim picks on CUDA for DTensor parameters (_default_to_fused_or_foreach):
                # the foreach kernels, whose temporaries span all parameters of a group at once (on
                # offloaded, host parameters it picks the per-tensor loop, as on this fake CPU device)
                for group in optimizer.param_groups:
                    group["foreach"] = True
            if policy.offload_parameters:
                notes.append(offload_note(wrapped, world_size))
            initialise_optimizer_state(
                wrapped, optimizer, keep_gradients=accumulation > 1 and micro_batches == 1
            )
            tracker = DryRunTracker(
                wrapped, optimizer, limit=limit, offload_parameters=policy.offload_parameters, explain=explain
            )
            complete = True
            try:
                with tracker:
                    train_step(wrapped, optimizer, batches, mesh, stage.lr, recipe.optimizer.grad_clip)
            except OverLimit:
                complete = False
            peak = tracker.get_tracker_snapshot("peak")
            after = tracker.get_tracker_snapshot("current")
    device_peak = peak.get(PLAN_DEVICE, {})
    memory = MemoryPlan.from_tracker(
        device_peak,
        optimizer_state=after.get(PLAN_DEVICE, {}).get(_FSDPRefType.OPT, 0),
        host_snapshot=peak.get(HOST_DEVICE, {}),
        host_optimizer_state=after.get(HOST_DEVICE, {}).get(_FSDPRefType.OPT, 0),
        phase=tracker.peak_phase,
    )
    return DryRun(
        stage=stage.name,
        world_size=world_size,
        sequence_parallel=sp,
        data_parallel=numbers["data_parallel"],
        grad_accumulation=accumulation,
        seq_len=stage.seq_len,
        tokens_per_gpu=batches[0].seq_len // sp,
        parameters=parameters,
        activation_policy=policy.describe(),
        attention=attention,
        target=target,
        notes=notes,
        memory=memory,
        seconds=time.perf_counter() - started,
        complete=complete,
        live_at_limit=tracker.live_at_limit,
    )
