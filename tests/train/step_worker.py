"""Run under torchrun (gloo): one step's loss and gradients under a parallel layout.

    torchrun --nproc_per_node 2 step_worker.py OUT_DIR   reference, batch4, dp2 and sp2
    torchrun --nproc_per_node 4 step_worker.py OUT_DIR   reference and dp2sp2

The reference is one process with no parallelism at all: the plain model, each of the 4 sequences'
loss sum divided by the total valid-token count, accumulated over 4 backward passes. "batch4" is the
same plain model on one packed sequence holding all 4. The parallel layouts go through `parallelize`
(Ulysses where sp > 1, activation checkpointing, FSDP2) and the loop's `accumulate_gradients`.
Rank 0 writes each loss and the full gradients to OUT_DIR/<name>.pt.
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
        np.concatenate([s.input_ids for s in seqs]),
        np.concatenate([s.doc_lens for s in seqs]),
        np.concatenate(masks),
    )


def tiny_model() -> CausalLMWithChunkedLoss:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        sliding_window=None,
        tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(config).float()
    model.set_attn_implementation(register_attention("sdpa_per_doc"))
    return CausalLMWithChunkedLoss(model, chunk_tokens=32)


def save(model: torch.nn.Module, loss: float, valid: int, path: Path) -> None:
    grads = {}
    for name, param in model.named_parameters():
        grad = param.grad.full_tensor() if isinstance(param.grad, DTensor) else param.grad
        grads[name] = grad.detach().clone()
    if torch.distributed.get_rank() == 0:
        torch.save({"loss": torch.tensor(loss), "valid": valid, "grads": grads}, path)


def plain(seqs: list[PackedSequence], path: Path) -> None:
    """One process, no parallelism: sum of token losses over the global valid count."""
    model = tiny_model()
    batches = [sequence_to_batch(s, "document", 1) for s in seqs]
    valid = sum(b.num_valid_tokens for b in batches)
    total = 0.0
    for batch in batches:
        loss_sum, _ = model(batch)
        (loss_sum / valid).backward()
        total += float(loss_sum)
    save(model, total / valid, valid, path)


def parallel(mesh: ParallelMesh, seqs: list[PackedSequence], path: Path) -> None:
    model = parallelize(tiny_model(), mesh, "sdpa_per_doc", activation_checkpointing=True)
    batches = [sequence_to_batch(s, "document", mesh.sp_size) for s in seqs]
    result = accumulate_gradients(model, batches, mesh)
    save(model, result.loss, result.num_valid_tokens, path)


def main(out_dir: str) -> None:
    out = Path(out_dir)
    seqs = sequences()
    mesh = ParallelMesh.create(1)  # initialises the process group
    plain(seqs, out / "reference.pt")
    if mesh.world_size == 2:
        plain([concatenated(seqs)], out / "batch4.pt")
        # rank 0: the two fully trained sequences, rank 1: the two with 6 trained tokens each
        parallel(mesh, seqs[2 * mesh.dp_rank : 2 * mesh.dp_rank + 2], out / "dp2.pt")
        parallel(ParallelMesh.create(2), seqs, out / "sp2.pt")
    else:
        mesh = ParallelMesh.create(2)
        parallel(mesh, seqs[2 * mesh.dp_rank : 2 * mesh.dp_rank + 2], out / "dp2sp2.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
