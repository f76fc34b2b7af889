"""Run under torchrun (gloo, 2 processes): one step under each activation policy.

    torchrun --nproc_per_node 2 policy_worker.py OUT_DIR

For Llama, Qwen2 and Mistral shapes at SP 1 (data parallel over the 2 ranks) and SP 2, the same model
goes through `parallelize` (Ulysses, activation checkpointing, the policy, FSDP2) and the loop's
`accumulate_gradients` on the same two packed sequences (two micro-batches) under each policy of
POLICIES, then the gradient norm and an AdamW step. Rank 0 writes OUT_DIR/<arch>_sp<N>.pt: per
policy the loss, the full gradients, the gradient norm, the updated parameters and the offloader's stats. One launch serves test_tiled_mlp.py and test_offload.py (torchrun start-up is most
of the time).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch.distributed.tensor import DTensor
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from prolong.config import OptimizerSpec
from prolong.data.format import PackedSequence
from prolong.model.attention import register_attention
from prolong.model.loss import CausalLMWithChunkedLoss
from prolong.parallel.mesh import ParallelMesh
from prolong.parallel.parallelize import activation_offloader, parallelize
from prolong.parallel.tiled_mlp import TiledMLPMixin, TiledNormMixin
from prolong.train.loop import _global_grad_norm, accumulate_gradients, sequence_to_batch
from prolong.train.schedule import build_optimizer

VOCAB = 96
ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {"sliding_window": None}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
}
TILE_TOKENS = 13  # uneven tiles, the last one short
POLICIES = {  # name: parallelize kwargs on top of activation checkpointing
    "plain": {},
    "tiled": {"tiled_mlp": True, "mlp_tile_tokens": TILE_TOKENS},
    "offload": {"offload_activations": True},
    "offload_tiled": {"offload_activations": True, "tiled_mlp": True, "mlp_tile_tokens": TILE_TOKENS},
    "tiled_norms": {"tiled_mlp": True, "mlp_tile_tokens": TILE_TOKENS, "tiled_norms": True},
    # FSDP2's CPUOffloadPolicy on the CPU device: the same code path with its copies to "cpu" no-ops
    "offload_parameters": {"offload_parameters": True},
    "offload_everything": {"offload_parameters": True, "offload_activations": True},
}
NORM_TILE_TOKENS = 11


def tiny_model(arch: str) -> CausalLMWithChunkedLoss:
    config_cls, model_cls, extra = ARCHS[arch]
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        **extra,
    )
    model = model_cls(config).float()
    model.set_attn_implementation(register_attention("sdpa_per_doc"))
    return CausalLMWithChunkedLoss(model, chunk_tokens=32)


def sequences(rank: int, dp: int) -> list[PackedSequence]:
    rng = np.random.default_rng(rank if dp > 1 else 0)  # SP ranks hold the same sequences
    return [
        PackedSequence(rng.integers(0, VOCAB, 96).astype(np.uint32), np.asarray(doc_lens, np.int32), None)
        for doc_lens in ([20, 50, 26], [96])
    ]


def full(tensor: torch.Tensor) -> torch.Tensor:
    return (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach().clone()


def step(arch: str, mesh: ParallelMesh, **policy: object) -> dict[str, object]:
    model = parallelize(tiny_model(arch), mesh, "sdpa_per_doc", activation_checkpointing=True, **policy)
    for module in model.modules():
        if isinstance(module, TiledNormMixin):
            module.norm_tile_tokens = NORM_TILE_TOKENS  # uneven tiles of the 96 (48 per SP rank) tokens
    batches = [sequence_to_batch(s, "document", mesh.sp_size) for s in sequences(mesh.dp_rank, mesh.dp_size)]
    result = accumulate_gradients(model, batches, mesh)
    grads = {name: full(param.grad) for name, param in model.named_parameters()}
    # then the rest of train_step: the gradient norm and clipping, and the AdamW update (on the host's
    # copies with parameter offload)
    optimizer = build_optimizer(model, OptimizerSpec(), lr=1e-3)
    grad_norm = torch.tensor(_global_grad_norm(model, 0.5), dtype=torch.float64)
    optimizer.step()
    updated = {name: full(param) for name, param in model.named_parameters()}
    # FSDP2's own record of the policy (private, a test's check that parallelize passed it on)
    group = model._get_fsdp_state()._fsdp_param_group
    offloaded = all(fsdp_param.offload_to_cpu for fsdp_param in group.fsdp_params)
    offloader = activation_offloader(model)
    stats = offloader.stats if offloader is not None else None
    return {
        "loss": torch.tensor(result.loss, dtype=torch.float64),
        "grads": grads,
        "grad_norm": grad_norm,
        "updated": updated,
        "parameters_offloaded": offloaded,
        "tiled_norms": sum(isinstance(m, TiledNormMixin) for m in model.modules()),
        "offloaded_tensors": stats.tensors if stats else 0,
        "peak_host_bytes": stats.peak_host_bytes if stats else 0,
        "host_bytes_after": stats.host_bytes if stats else 0,
        "tiled_layers": sum(isinstance(m, TiledMLPMixin) for m in model.modules()),
    }


def main(out_dir: str) -> None:
    for sp in (1, 2):
        mesh = ParallelMesh.create(sp)
        for arch in ARCHS:
            results = {name: step(arch, mesh, **policy) for name, policy in POLICIES.items()}
            if torch.distributed.get_rank() == 0:
                torch.save(results, Path(out_dir) / f"{arch}_sp{sp}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
