"""Apply parallelism to a model, in one place and in one order:

sequence parallelism -> activation checkpointing per decoder layer -> FSDP2 per decoder layer, then root.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from prolong.parallel.mesh import ParallelMesh, validate_sequence_parallel
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
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise TypeError(f"{type(model).__name__} has no decoder layers transformers can checkpoint")
    return layers


def parallelize(
    model: nn.Module,
    mesh: ParallelMesh,
    attention_backend: str,
    activation_checkpointing: bool = True,
    param_dtype: torch.dtype | None = None,
) -> nn.Module:
    """Make `model` (an HF model or a loss wrapper around one) ready to train on `mesh`; returns it.

    - sequence parallelism (mesh.sp_size > 1): the Ulysses attention wrapper becomes the model's
      attention implementation; batches must then go through `sp_shard_batch`.
    - activation checkpointing: each decoder layer recomputes its forward in backward.
    - FSDP2: `fully_shard` on each decoder layer, then on the root, over all ranks. `param_dtype` (bf16
      on GPU) is the compute dtype; sharded parameters, gradient reduction and optimizer state stay in
      the parameters' own dtype (float32 master weights).
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
        hf_model.set_attn_implementation(register_ulysses_attention(mesh.sp_group, attention_backend))
    if activation_checkpointing:
        # non-reentrant: works with FSDP2's hooks and with inputs that do not require grad
        hf_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in decoder_layers(hf_model):
        fully_shard(layer, mesh=mesh.fsdp_mesh, mp_policy=policy)
    # the root holds embeddings, final norm and LM head; keeping it gathered after forward saves a
    # second all-gather at the start of backward
    fully_shard(model, mesh=mesh.fsdp_mesh, mp_policy=policy, reshard_after_forward=False)
    return model
