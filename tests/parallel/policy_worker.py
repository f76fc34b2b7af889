"""Run under torchrun (gloo, 2 processes): one step under each activation policy.

    torchrun --nproc_per_node 2 policy_worker.py OUT_DIR

For Llama, Qwen2 and Mistral shapes at SP 1 (data parallel over the 2 ranks) and SP 2, the same model
goes through `parallelize` (Ulysses, activation checkpointing, the policy, FSDP2) and the loop's
`accumulate_gradients` on the same two packed sequences (two micro-batches) under each policy of
POLICIES. Rank 0 writes OUT_DIR/<arch>_sp<N>.pt: per policy the loss, the full gradients and the
offloader's stats. One launch serves test_tiled_mlp.py and test_offload.py (torchrun start-up is most
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

from prolong.data.format import PackedSequence
from prolong.model.attention import register_attention
from prolong.model.loss import CausalLMWithChunkedLoss
from prolong.parallel.mesh import ParallelMesh
from prolong.parallel.parallelize import activation_offloader, parallelize
from prolong.parallel.tiled_mlp import TiledMLPMixin
from prolong.train.loop import accumulate_gradients, sequence_to_batch

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
}


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


def step(arch: str, mesh: ParallelMesh, **policy: object) -> dict[str, object]:
    model = parallelize(tiny_model(arch), mesh, "sdpa_per_doc", activation_checkpointing=True, **policy)
    batches = [sequence_to_batch(s, "document", mesh.sp_size) for s in sequences(mesh.dp_rank, mesh.dp_size)]
    result = accumulate_gradients(model, batches, mesh)
    grads = {}
    for name, param in model.named_parameters():
        grad = param.grad.full_tensor() if isinstance(param.grad, DTensor) else param.grad
        grads[name] = grad.detach().clone()
    offloader = activation_offloader(model)
    stats = offloader.stats if offloader is not None else None
    return {
        "loss": torch.tensor(result.loss, dtype=torch.float64),
        "grads": grads,
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
