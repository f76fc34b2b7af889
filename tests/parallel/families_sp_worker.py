"""Run under torchrun (gloo, 2 ranks): the family matrix through Ulysses sequence parallelism.

Every rank builds the same tiny model of each exact family of tests/model/family_cases.py (same seed),
runs its half of the packed row through the Ulysses exchange (prolong's one attention adapter with the
all-to-all kernel), and compares with each document run alone through the family's own eager attention:
the logits gathered from both ranks and the gradients summed over them. Rank 0 writes the differences
to OUT/families_sp.json for the test to check. Several families share one launch, and the references are
split between the ranks, to keep it fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from family_cases import FAMILIES, build, difference, documents_alone, max_difference, packed_batch

from prolong.model.attention import check_attention_support
from prolong.model.batch import attention_kwargs
from prolong.parallel.ulysses import register_ulysses_attention, sp_shard_batch


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, sp = dist.get_rank(), dist.get_world_size()
    group = dist.new_group(list(range(sp)))
    ulysses = register_ulysses_attention(group, "auto")
    results: dict[str, dict[str, float]] = {}
    exact = [f for f in FAMILIES if f.refused is None and f.sequence_parallel]
    for index, family in enumerate(exact):
        model = build(family)
        batch = packed_batch()
        # the references are split between the ranks: family i is compared on rank i % sp
        compares_here = index % sp == rank
        if compares_here:
            want_logits, want_grads = documents_alone(model, batch)
        check_attention_support(model)
        model.set_attn_implementation(ulysses)
        local = sp_shard_batch(batch, rank, sp)
        assert int(local.cu_seqlens[-1]) == batch.seq_len, "the matrix must exercise the exchange"
        logits = model(input_ids=local.input_ids, **attention_kwargs(local)).logits[0]
        F.cross_entropy(logits, local.labels[0], ignore_index=-100, reduction="sum").backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        for grad in grads.values():
            dist.all_reduce(grad, group=group)
        pieces = [torch.empty_like(logits) for _ in range(sp)]
        dist.all_gather(pieces, logits.detach().contiguous(), group=group)
        if compares_here:
            results[family.name] = {
                "logits": difference(torch.cat(pieces), want_logits),
                "grads": max_difference(grads, want_grads),
            }
    everyone: list[dict[str, dict[str, float]] | None] = [None] * sp
    dist.all_gather_object(everyone, results, group=group)
    if rank == 0:
        merged = {name: r for part in everyone if part for name, r in part.items()}
        (Path(out_dir) / "families_sp.json").write_text(json.dumps(merged, indent=1), encoding="utf-8")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
