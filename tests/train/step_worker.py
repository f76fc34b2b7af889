"""Run under torchrun (gloo): one step's loss and gradients under a parallel layout.

    step_worker.py MODE OUT_DIR     MODE: single (one process: accumulation 4 and one packed batch of
                                    the 4), dp2 (2 ranks, 2 sequences each), sp2 (2 ranks, one group),
                                    dp2sp2 (4 ranks)

The model goes through `parallelize` (Ulysses where sp > 1, activation checkpointing, FSDP2) and the
loop's `accumulate_gradients`; rank 0 writes the loss and the full gradients to OUT_DIR/<name>.pt.
The sequences are SFT-like: two have every token trained, two only a few, so the data-parallel ranks
hold very different numbers of valid tokens.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch.distributed.tensor import DTensor
from transformers import Qwen2Config, Qwen2ForCausalLM

from prolong.data.format import PackedSequence
from prolong.model.attention import register_attention
from prolong.model.loss import CausalLMWithChunkedLoss
from prolong.parallel.mesh import ParallelMesh
from prolong.parallel.parallelize import parallelize
from prolong.train.loop import accumulate_gradients, sequence_to_batch

VOCAB = 96


def sequences() -> list[PackedSequence]:
    rng = np.random.default_rng(0)
    out = []
    for i, doc_lens in enumerate([[20, 30, 14], [64], [9, 41, 14], [33, 31]]):
        ids = rng.integers(0, VOCAB, 64).astype(np.uint32)
        mask = None
        if i >= 2:  # few trained tokens, like an SFT answer
            mask = np.zeros(64, bool)
            mask[rng.choice(64, 6, replace=False)] = True
        out.append(PackedSequence(ids, np.asarray(doc_lens, np.int32), mask))
    return out


def concatenated(seqs: list[PackedSequence]) -> PackedSequence:
    """The four sequences as one packed sequence: same documents, so the same loss terms."""
    masks = [s.loss_mask if s.loss_mask is not None else np.ones(len(s.input_ids), bool) for s in seqs]
    return PackedSequence(
        np.concatenate([s.input_ids for s in seqs]), np.concatenate([s.doc_lens for s in seqs]), np.concatenate(masks)
    )


def build(mesh: ParallelMesh) -> torch.nn.Module:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, sliding_window=None, tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(config).float()
    model.set_attn_implementation(register_attention("sdpa_per_doc"))
    wrapped = CausalLMWithChunkedLoss(model, chunk_tokens=32)
    return parallelize(wrapped, mesh, "sdpa_per_doc", activation_checkpointing=True)


def run(mesh: ParallelMesh, seqs: list[PackedSequence], out: Path, name: str) -> None:
    model = build(mesh)
    batches = [sequence_to_batch(s, "document", mesh.sp_size) for s in seqs]
    result = accumulate_gradients(model, batches, mesh)
    grads = {}
    for param_name, param in model.named_parameters():
        grad = param.grad.full_tensor() if isinstance(param.grad, DTensor) else param.grad
        grads[param_name] = grad.detach().clone()
    if mesh.is_main:
        torch.save({"loss": torch.tensor(result.loss), "valid": result.num_valid_tokens, "grads": grads}, out / f"{name}.pt")


def main(mode: str, out_dir: str) -> None:
    out = Path(out_dir)
    seqs = sequences()
    if mode == "single":
        mesh = ParallelMesh.create(1)
        run(mesh, seqs, out, "accum4")
        run(mesh, [concatenated(seqs)], out, "batch4")
    elif mode == "dp2":
        mesh = ParallelMesh.create(1)
        # rank 0: the two fully trained sequences, rank 1: the two with 6 trained tokens each
        run(mesh, seqs[2 * mesh.dp_rank : 2 * mesh.dp_rank + 2], out, "dp2")
    elif mode == "sp2":
        mesh = ParallelMesh.create(2)
        run(mesh, seqs, out, "sp2")
    elif mode == "dp2sp2":
        mesh = ParallelMesh.create(2)
        run(mesh, seqs[2 * mesh.dp_rank : 2 * mesh.dp_rank + 2], out, "dp2sp2")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
