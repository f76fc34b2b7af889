"""Apply parallelism to a model, in one place and in one order:

sequence parallelism -> activation policies per decoder layer (tiled MLP, activation checkpointing,
checkpoint offload) -> FSDP2 per decoder layer, then root (optionally with its sharded state, the
parameters, gradients and optimizer state, offloaded to host memory).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from prolong.errors import UserError
from prolong.model.attention import DocumentKernel, document_attention
from prolong.parallel.mesh import ParallelMesh, validate_sequence_parallel
from prolong.parallel.offload import ActivationOffloader
from prolong.parallel.tiled_mlp import apply_tiled_mlp, apply_tiled_norms, resolve_tiled_mlp

if TYPE_CHECKING:
    from prolong.config import StageSpec, TrainingSpec
from prolong.parallel.ulysses import register_ulysses_attention


def hf_model_of(model: nn.Module) -> PreTrainedModel:
    """The Hugging Face model inside `model` (itself, or the one a loss wrapper holds)."""
    if isinstance(model, PreTrainedModel):
        return model
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            return module
    raise TypeError(f"{type(model).__name__} holds no Hugging Face PreTrainedModel")


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated decoder blocks (transformers marks them as GradientCheckpointingLayer)."""
    layers: list[nn.Module] = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise TypeError(f"{type(model).__name__} has no decoder layers transformers can checkpoint")
    return layers


@dataclass(frozen=True)
class ActivationPolicy:
    """A stage's resolved memory policies: the keyword arguments of `parallelize` that trade speed for
    memory (the activation policies, and the offload of the sharded parameters and optimizer state)."""

    activation_checkpointing: bool = True
    offload_activations: bool = False
    tiled_mlp: bool = False
    mlp_tile_tokens: int | None = None
    offload_parameters: bool = False
    tiled_norms: bool = False

    def kwargs(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        tiles = f"{self.mlp_tile_tokens} tokens per tile" if self.mlp_tile_tokens else "automatic tiles"
        on_off = {True: "on", False: "off"}
        return (
            f"activation checkpointing {on_off[self.activation_checkpointing]}, checkpoint offload "
            f"{on_off[self.offload_activations]}, tiled MLP " + (f"on ({tiles})" if self.tiled_mlp else "off")
            + f", tiled norms {on_off[self.tiled_norms]}, parameter offload {on_off[self.offload_parameters]}"
        )


def stage_activation_policy(training: TrainingSpec, stage: StageSpec, index: int) -> ActivationPolicy:
    """The activation policies of stage `index`: its own switches, else the training ones; auto resolved.

    Refuses offload without activation checkpointing, naming the recipe keys.
    """
    offload = training.offload_activations if stage.offload_activations is None else stage.offload_activations
    if offload and not stage.activation_checkpointing:
        raise UserError(
            f"stages.{index} ({stage.name!r}): offload_activations moves the layer inputs that activation "
            "checkpointing keeps to host memory; set activation_checkpointing: true in the stage, or "
            "offload_activations: false"
        )
    tiled = training.tiled_mlp if stage.tiled_mlp is None else stage.tiled_mlp
    parameters = training.offload_parameters if stage.offload_parameters is None else stage.offload_parameters
    norms = training.tiled_norms if stage.tiled_norms is None else stage.tiled_norms
    tokens_per_rank = stage.seq_len // stage.sequence_parallel
    return ActivationPolicy(
        activation_checkpointing=stage.activation_checkpointing,
        offload_activations=offload,
        tiled_mlp=resolve_tiled_mlp(tiled, tokens_per_rank),
        mlp_tile_tokens=training.mlp_tile_tokens,
        offload_parameters=parameters,
        tiled_norms=resolve_tiled_mlp(norms, tokens_per_rank),
    )


def apply_activation_policies(
    model: nn.Module,
    device: torch.device,
    activation_checkpointing: bool = True,
    offload_activations: bool = False,
    tiled_mlp: bool = False,
    mlp_tile_tokens: int | None = None,
    tiled_norms: bool = False,
) -> ActivationOffloader | None:
    """The activation-policy slot of `parallelize` (before FSDP2), on an HF model or a wrapper of one.

    - tiled MLP: each decoder layer's MLP runs over sequence tiles, forward and backward
      (`mlp_tile_tokens` per tile, None: chosen from the length and hidden size per call).
    - tiled norms: the RMSNorms of the residual stream (each layer's and the final one) likewise.
    - activation checkpointing: each decoder layer recomputes its forward in backward.
    - offload: the input each checkpointed layer keeps is held in host memory until its backward
      (needs checkpointing). Returns the offloader (its stats say how many host bytes it holds).
    """
    hf_model = hf_model_of(model)
    if offload_activations and not activation_checkpointing:
        raise UserError(
            "offload_activations moves the inputs that activation checkpointing keeps to host memory; "
            "set activation_checkpointing: true in the stage, or offload_activations: false"
        )
    if tiled_mlp:
        apply_tiled_mlp(decoder_layers(hf_model), mlp_tile_tokens)
    if tiled_norms:
        apply_tiled_norms(hf_model, decoder_layers(hf_model))
    if not activation_checkpointing:
        return None
    # non-reentrant: works with FSDP2's hooks and with inputs that do not require grad
    hf_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if not offload_activations:
        return None
    offloader = ActivationOffloader(device)
    for layer in decoder_layers(hf_model):
        # GradientCheckpointingLayer runs its forward through `_gradient_checkpointing_func` (transformers
        # 5.x; set by activation_checkpointing_enable above); tests/parallel/test_offload.py fails if a
        # later transformers stops calling it
        layer._gradient_checkpointing_func = offloader.checkpoint  # type: ignore[assignment]
    return offloader


def activation_offloader(model: nn.Module) -> ActivationOffloader | None:
    """The offloader `apply_activation_policies` installed in `model`'s decoder layers, if any."""
    for layer in decoder_layers(hf_model_of(model)):
        owner = getattr(getattr(layer, "_gradient_checkpointing_func", None), "__self__", None)
        if isinstance(owner, ActivationOffloader):
            return owner
    return None


def offload_policy(mesh: ParallelMesh, offload_parameters: bool) -> OffloadPolicy:
    """FSDP2's offload policy: none, or the sharded state in host memory, pinned where the device is a
    GPU (pinned copies overlap with compute; a CPU-only run has nothing to pin for)."""
    if not offload_parameters:
        return OffloadPolicy()
    return CPUOffloadPolicy(pin_memory=mesh.device.type == "cuda")


def materialize(model: nn.Module, device: torch.device, offload_parameters: bool) -> None:
    """Give a model built on the meta device and sharded by `parallelize` its (uninitialised) storage:
    parameters where FSDP2 keeps the shards (host memory with parameter offload, else `device`), buffers
    (rotary frequencies) on `device`, where the computation reads them."""
    if not offload_parameters:
        model.to_empty(device=device)
        return
    model.to_empty(device="cpu")
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            setattr(module, name, buffer.to(device))  # an existing buffer's name: stays a buffer, same kind


def parallelize(
    model: nn.Module,
    mesh: ParallelMesh,
    attention_backend: str,
    activation_checkpointing: bool = True,
    param_dtype: torch.dtype | None = None,
    offload_activations: bool = False,
    tiled_mlp: bool = False,
    mlp_tile_tokens: int | None = None,
    document_kernel: DocumentKernel = document_attention,
    offload_parameters: bool = False,
    tiled_norms: bool = False,
) -> nn.Module:
    """Make `model` (an HF model or a loss wrapper around one) ready to train on `mesh`; returns it.

    - sequence parallelism (mesh.sp_size > 1): the Ulysses attention wrapper becomes the model's
      attention implementation; batches must then go through `sp_shard_batch`. `document_kernel` is the
      attention it runs after the exchange (prolong plan passes its stand-in for the GPU kernels).
    - activation policies (`apply_activation_policies`): tiled MLP and norms, activation checkpointing
      (each decoder layer recomputes its forward in backward), offload of the checkpointed inputs.
    - FSDP2: `fully_shard` on each decoder layer, then on the root, over all ranks. `param_dtype` (bf16
      on GPU) is the compute dtype; sharded parameters, gradient reduction and optimizer state stay in
      the parameters' own dtype (float32 master weights).
    - offload_parameters: FSDP2's CPUOffloadPolicy. The sharded parameters, their gradients and so the
      optimizer state live in host memory (pinned on GPUs) and the optimizer step runs on the CPU; each
      layer's shard is copied to the device for its all-gather, each gradient shard back after its
      reduce-scatter. A model built on the meta device then needs `materialize` (not `to_empty`).
    """
    hf_model = hf_model_of(model)
    config = hf_model.config
    validate_sequence_parallel(
        mesh.sp_size,
        mesh.world_size,
        config.num_attention_heads,
        getattr(config, "num_key_value_heads", None),
    )
    if mesh.sp_size > 1:
        ulysses = register_ulysses_attention(mesh.sp_group, attention_backend, document_kernel)
        hf_model.set_attn_implementation(ulysses)
    apply_activation_policies(
        hf_model,
        mesh.device,
        activation_checkpointing,
        offload_activations,
        tiled_mlp,
        mlp_tile_tokens,
        tiled_norms,
    )
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    offload = offload_policy(mesh, offload_parameters)
    for layer in decoder_layers(hf_model):
        fully_shard(layer, mesh=mesh.fsdp_mesh, mp_policy=policy, offload_policy=offload)
    # the root holds embeddings, final norm and LM head; keeping it gathered after forward saves a
    # second all-gather at the start of backward
    fully_shard(
        model, mesh=mesh.fsdp_mesh, mp_policy=policy, reshard_after_forward=False, offload_policy=offload
    )
    return model
