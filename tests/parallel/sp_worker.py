"""Run under torchrun (gloo): Ulysses SP loss and gradients vs the same model on the whole sequence.

Every rank builds the same tiny float32 model and packed batch (same seed). Rank 0 writes, per case,
the single-process reference and the SP result (loss summed over the group, gradients summed over the
group) to OUT/<case>.pt for the test to compare.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from prolong.model.attention import register_attention
from prolong.model.batch import attention_kwargs, make_packed_batch
from prolong.parallel.ulysses import register_ulysses_attention, sp_shard_batch

CASES = {
    # name: (architecture, heads, kv heads, doc lengths)
    "llama_mha": ("llama", 4, 4, [10, 30, 7, 17]),
    "qwen2_gqa": ("qwen2", 4, 2, [5, 40, 3, 16]),
    "llama_mqa_repeat": ("llama", 4, 1, [33, 31]),
    "llama_docs_fit_slices": ("llama", 4, 2, [16, 16, 20, 12]),
}


def tiny_model(arch: str, heads: int, kv_heads: int) -> torch.nn.Module:
    torch.manual_seed(0)
    common = {
        "vocab_size": 128,
        "hidden_size": 32 * heads // 4 * 2,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": 256,
        "attention_dropout": 0.0,
    }
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**common)).float()
    return Qwen2ForCausalLM(Qwen2Config(**common)).float()


def loss_and_grads(model: torch.nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=batch.input_ids, **attention_kwargs(batch)).logits
    loss_sum = F.cross_entropy(logits[0], batch.labels[0], ignore_index=-100, reduction="sum")
    loss_sum.backward()
    return loss_sum.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, sp = dist.get_rank(), dist.get_world_size()
    group = dist.new_group(list(range(sp)))
    base = register_attention("sdpa_per_doc")
    ulysses = register_ulysses_attention(group, "sdpa_per_doc")
    for case, (arch, heads, kv_heads, doc_lens) in CASES.items():
        if heads % sp:
            continue
        seq_len = sum(doc_lens)
        generator = torch.Generator().manual_seed(1)
        input_ids = torch.randint(0, 128, (seq_len,), generator=generator)
        batch = make_packed_batch(input_ids, doc_lens)
        model = tiny_model(arch, heads, kv_heads)
        model.set_attn_implementation(base)
        ref_loss, ref_grads = loss_and_grads(model, batch)
        model.set_attn_implementation(ulysses)
        loss, grads = loss_and_grads(model, sp_shard_batch(batch, rank, sp))
        dist.all_reduce(loss, group=group)
        for grad in grads.values():
            dist.all_reduce(grad, group=group)
        if rank == 0:
            torch.save(
                {"ref_loss": ref_loss, "loss": loss, "ref_grads": ref_grads, "grads": grads},
                Path(out_dir) / f"{case}.pt",
            )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
