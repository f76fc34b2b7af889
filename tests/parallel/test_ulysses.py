"""Ulysses sequence parallelism == one process on the whole packed sequence (float32, gloo)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prolong.model.batch import make_packed_batch
from prolong.parallel.ulysses import documents_fit_slices, kv_repeats, sp_shard_batch

HERE = Path(__file__).parent


@pytest.mark.distributed
def test_sp2_matches_single_process(tmp_path: Path, torchrun) -> None:
    torchrun(HERE / "sp_worker.py", 2, str(tmp_path))
    cases = sorted(p.stem for p in tmp_path.glob("*.pt"))
    assert cases == ["llama_docs_fit_slices", "llama_mha", "llama_mqa_repeat", "qwen2_gqa"]
    for case in cases:
        result = torch.load(tmp_path / f"{case}.pt", weights_only=True)
        torch.testing.assert_close(result["loss"], result["ref_loss"], rtol=1e-5, atol=1e-5, msg=case)
        assert result["grads"].keys() == result["ref_grads"].keys()
        for name, grad in result["grads"].items():
            torch.testing.assert_close(
                grad, result["ref_grads"][name], rtol=1e-5, atol=1e-5, msg=f"{case} {name}"
            )


def test_kv_heads_repeated_only_when_needed() -> None:
    assert kv_repeats(num_key_value_heads=8, sp=8) == 1
    assert kv_repeats(num_key_value_heads=2, sp=2) == 1
    assert kv_repeats(num_key_value_heads=2, sp=4) == 2
    assert kv_repeats(num_key_value_heads=1, sp=8) == 8
    assert kv_repeats(num_key_value_heads=4, sp=6) == 3


def test_shard_keeps_global_boundaries_and_shifted_labels() -> None:
    batch = make_packed_batch(torch.arange(12), [5, 7])
    halves = [sp_shard_batch(batch, rank, 2) for rank in range(2)]
    assert torch.equal(torch.cat([h.labels for h in halves], 1), batch.labels)
    assert torch.equal(torch.cat([h.position_ids for h in halves], 1), batch.position_ids)
    # the label of the last token of rank 0's slice is the first token of rank 1's slice
    assert int(halves[0].labels[0, -1]) == 6
    assert all(torch.equal(h.cu_seqlens, batch.cu_seqlens) for h in halves)
    assert sum(h.num_valid_tokens for h in halves) == batch.num_valid_tokens


def test_documents_inside_slices_use_local_boundaries() -> None:
    batch = make_packed_batch(torch.arange(16), [3, 5, 8])
    assert documents_fit_slices(batch.cu_seqlens, 2)
    assert not documents_fit_slices(batch.cu_seqlens, 4)
    second = sp_shard_batch(batch, 1, 2)
    assert second.cu_seqlens.tolist() == [0, 8]
    first = sp_shard_batch(batch, 0, 2)
    assert first.cu_seqlens.tolist() == [0, 3, 8] and first.max_seqlen == 5
