"""Shard format (atomic, O(1) access) and the stage mixture (shares, rank independence, resume)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from prolong.config import StageSpec
from prolong.data.format import PackedSequence, ShardReader, ShardWriter, is_complete
from prolong.data.mixture import StageMixture, TokenizerMismatchError, check_tokenizer, shard_path
from prolong.data.tokenize import tokenizer_identity
from prolong.errors import UserError

SEQ_LEN = 64


def write_shard(path, num_sequences: int, value: int, doc_lens=(SEQ_LEN,), meta=None) -> None:
    writer = ShardWriter(path)
    for i in range(num_sequences):
        writer.add(np.full(SEQ_LEN, value * 1000 + i, dtype=np.uint32), np.asarray(doc_lens))
    writer.close({"seq_len": SEQ_LEN, "tokenizer": {"name": "t", "vocab_hash": "abc"}, **(meta or {})})


def test_roundtrip_and_random_access(tmp_path) -> None:
    writer = ShardWriter(tmp_path / "s", with_loss_mask=True)
    sequences = [
        PackedSequence(np.arange(n, dtype=np.uint32), np.asarray(lens, np.int32), np.arange(n) % 2 == 0)
        for n, lens in ((5, [2, 3]), (3, [3]), (7, [1, 1, 5]))
    ]
    for s in sequences:
        writer.add(s.input_ids, s.doc_lens, s.loss_mask)
    meta = writer.close({"domain": "d", "seq_len": 8})
    reader = ShardReader(tmp_path / "s")
    assert len(reader) == 3 and meta["num_tokens"] == 15 and meta["num_documents"] == 6
    for i in (2, 0, 1, -1):
        expected = sequences[i]
        got = reader[i]
        np.testing.assert_array_equal(got.input_ids, expected.input_ids)
        np.testing.assert_array_equal(got.doc_lens, expected.doc_lens)
        np.testing.assert_array_equal(got.loss_mask, expected.loss_mask)
    assert reader[2].attention_cost == 1 + 1 + 25
    with pytest.raises(IndexError):
        reader[3]


def test_interrupted_write_never_looks_complete(tmp_path) -> None:
    writer = ShardWriter(tmp_path / "s")
    writer.add(np.zeros(4, np.uint32), np.asarray([4]))
    assert not is_complete(tmp_path / "s")  # nothing at the target until close()
    with pytest.raises(FileNotFoundError, match="not a finished shard"):
        ShardReader(tmp_path / "s")
    writer.abort()
    assert list(tmp_path.iterdir()) == []


STAGE = StageSpec(
    name="st",
    seq_len=SEQ_LEN,
    tokens_per_step=SEQ_LEN * 16,
    steps=200,
    lr=1e-3,
    min_lr=0,
    mixture=[
        {"domain": "code", "proportion": 0.3},
        {"domain": "code", "proportion": 0.2, "doc_len": 16},
        {"domain": "books", "proportion": 0.13},
        {"domain": "web", "proportion": 0.37},
    ],
)


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    sizes = {("code", 64): 97, ("code", 16): 40, ("books", 64): 13, ("web", 64): 500}
    for k, ((domain, doc_len), n) in enumerate(sizes.items()):
        lens = (SEQ_LEN,) if doc_len == SEQ_LEN else (16, 16, 16, 16)
        write_shard(shard_path(root, "st", domain, doc_len), n, k, lens)
    return root


def test_domain_token_shares_within_one_point(shard_root) -> None:
    mixture = StageMixture.open(shard_root, STAGE, seed=5)
    for start in (0, 12_345):
        tokens = Counter()
        for g in range(start, start + 2000):
            k, _ = mixture.locate(g)
            c = mixture.components[k]
            tokens[(c.domain, c.doc_len)] += len(mixture[g].input_ids)
        total = sum(tokens.values())
        for entry in STAGE.mixture:
            share = tokens[(entry.domain, entry.doc_len or SEQ_LEN)] / total
            assert abs(share - entry.proportion) < 0.01, (entry, share)


def test_epochs_visit_every_sequence_once(shard_root) -> None:
    mixture = StageMixture.open(shard_root, STAGE, seed=5)
    books = [mixture.locate(g)[1] for g in range(3000) if mixture.domain_of(g) == "books"]
    for epoch in range(len(books) // 13):
        assert sorted(books[epoch * 13 : (epoch + 1) * 13]) == list(range(13))


def test_same_global_order_for_any_rank_count_and_resume(shard_root) -> None:
    reference = StageMixture.open(shard_root, STAGE, seed=7)
    per_step = STAGE.sequences_per_step
    steps = range(30)
    expected = {g: reference[g].input_ids[0] for s in steps for g in reference.indices_for_step(s, per_step)}
    for dp in (1, 2, 8):
        ranks = [StageMixture.open(shard_root, STAGE, seed=7) for _ in range(dp)]  # one per process
        for step in steps:
            indices = ranks[0].indices_for_step(step, per_step)
            for reorder in (False, True):
                shares = [m.rank_share(indices, r, dp, reorder) for r, m in enumerate(ranks)]
                assert sorted(g for share in shares for g in share) == indices  # same samples form the step
                for r, share in enumerate(shares):
                    assert [ranks[r][g].input_ids[0] for g in share] == [expected[g] for g in share]
    resumed = StageMixture.open(shard_root, STAGE, seed=7)  # fresh process resuming at sample k
    k = 10 * per_step + 3
    assert [resumed[g].input_ids[0] for g in range(k, 30 * per_step)] == [
        expected[g] for g in range(k, 30 * per_step)
    ]
    other_seed = StageMixture.open(shard_root, STAGE, seed=8)
    assert [other_seed[g].input_ids[0] for g in range(64)] != [expected[g] for g in range(64)]


def test_reordering_balances_costs_per_accumulation_index(shard_root) -> None:
    mixture = StageMixture.open(shard_root, STAGE, seed=1)
    indices = mixture.indices_for_step(4, 16)
    shares = [mixture.rank_share(indices, r, 4, reorder=True) for r in range(4)]
    costs = [[mixture.attention_cost(g) for g in share] for share in shares]
    for a in range(4):
        at_a = [costs[r][a] for r in range(4)]
        later = [costs[r][a + 1] for r in range(4)] if a < 3 else [0]
        assert min(at_a) >= max(later)  # every rank's a-th micro-batch costs at least any (a+1)-th


def test_tokenizer_mismatch_is_refused(tmp_path, tokenizer) -> None:
    from prolong.data.tokenizer_train import train_tokenizer
    from prolong.model.io import load_tokenizer

    other = load_tokenizer(train_tokenizer(["some other text entirely"] * 10, tmp_path / "other", 300))
    meta = {"domain": "web", "doc_len": 64, "tokenizer": tokenizer_identity(tokenizer)}
    check_tokenizer(meta, tokenizer)
    with pytest.raises(TokenizerMismatchError, match="was built with tokenizer 'tiny-bpe'.*Rebuild"):
        check_tokenizer(meta, other)


def test_missing_shard_says_how_to_build(tmp_path) -> None:
    with pytest.raises(UserError, match="prolong data build"):
        StageMixture.open(tmp_path, STAGE, seed=0)
