"""The MDS reader against datasets written by mosaicml-streaming's own MDSWriter (tests/fixtures/mds):
every value as written, packs as training sequences, zstd decompressed once, corruption refused."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prolong.data.mds import MdsDataset, MdsDocuments, MdsError, MdsPacks, pack_layout, scan

FIXTURES = Path(__file__).parents[1] / "fixtures" / "mds"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))


def fixture(name: str, tmp_path: Path) -> Path:
    """A private copy (zstd shards are decompressed next to themselves)."""
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def plain(value):
    return value.tolist() if isinstance(value, np.ndarray) else value


@pytest.mark.parametrize("name", [n for n in EXPECTED if n != "misc/pkl"])
def test_every_sample_reads_back_as_the_writer_was_given_it(name: str, tmp_path: Path) -> None:
    dataset = MdsDataset([fixture(name, tmp_path)])
    expected = EXPECTED[name]
    assert len(dataset) == len(expected)
    for i, sample in enumerate(expected):
        assert {column: plain(dataset.value(i, column)) for column in sample} == sample


def test_nested_layouts_list_their_parts_in_order() -> None:
    books = MdsDataset([FIXTURES / "packed" / "books"])  # procNN-64/ folders, no root index
    assert [f.parent.name for f in books.index_files] == ["proc00-64", "proc01-64"]
    code = MdsDataset([FIXTURES / "packed" / "code"])  # root index over 0-0/ (two shards) and 0-1/
    assert [f.parent.name for f in code.index_files] == ["code"]
    assert [s.raw_path.relative_to(FIXTURES / "packed" / "code").as_posix() for s in code.shards] == [
        "0-0/shard.00000.mds",
        "0-0/shard.00001.mds",
        "0-1/shard.00000.mds",
    ]
    both = MdsDataset([FIXTURES / "packed" / "books", FIXTURES / "packed" / "code"])
    assert len(both) == len(books) + len(code)
    assert plain(both.value(len(books), "input_ids")) == EXPECTED["packed/code"][0]["input_ids"]


def test_values_are_views_of_the_mapped_shard_not_copies() -> None:
    dataset = MdsDataset([FIXTURES / "packed" / "books"])
    ids = dataset.value(0, "input_ids")
    assert not ids.flags.owndata and not ids.flags.writeable
    assert ids.base is not None


def test_packs_become_training_sequences_with_document_and_sft_masks() -> None:
    books = MdsPacks(MdsDataset([FIXTURES / "packed" / "books"]), seq_len=32, use_mask=False)
    for i, sample in enumerate(EXPECTED["packed/books"]):
        sequence = books[i]
        bounds = np.asarray(sample["indices"])
        assert sequence.input_ids.tolist() == sample["input_ids"]
        assert sequence.doc_lens.tolist() == (bounds[:, 1] - bounds[:, 0]).tolist()
        assert books.doc_lens_of(i).tolist() == sequence.doc_lens.tolist()
        assert sequence.loss_mask is None
    chat = MdsPacks(MdsDataset([FIXTURES / "sft" / "chat"]), seq_len=32, use_mask=True)
    for i, sample in enumerate(EXPECTED["sft/chat"]):
        assert chat[i].loss_mask.tolist() == [bool(m) for m in sample["mask"]]
    # a pretraining domain ignores a mask column, as ProLong's pretraining did
    assert MdsPacks(MdsDataset([FIXTURES / "sft" / "chat"]), 32, use_mask=False)[0].loss_mask is None


def test_tokens_outside_every_document_are_a_document_that_is_never_a_target() -> None:
    packs = MdsPacks(MdsDataset([FIXTURES / "misc" / "gaps"]), seq_len=32, use_mask=False)
    sequence = packs[0]  # documents [0, 10) and [14, 26) of 32 tokens
    assert sequence.doc_lens.tolist() == [10, 4, 12, 6]
    assert sequence.loss_mask.tolist() == [True] * 10 + [False] * 4 + [True] * 12 + [False] * 6
    assert packs[1].doc_lens.tolist() == [32] and packs[1].loss_mask is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=6), st.integers(1, 40))
def test_pack_layout_tiles_the_pack_and_keeps_documents_whole(pairs: list, length: int) -> None:
    try:
        lens, covered = pack_layout(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), length, "x")
    except MdsError:
        kept = [(a, b) for a, b in pairs if b > a]
        assert any(a2 < b1 for (_, b1), (a2, _) in itertools.pairwise(kept)) or any(b > length for _, b in kept)
        return
    assert int(lens.sum()) == length and (lens > 0).all()
    starts = np.concatenate([[0], np.cumsum(lens[:-1])])
    documents = {(a, b) for a, b in pairs if b > a}
    pieces = {(int(s), int(s + n)) for s, n in zip(starts, lens, strict=True)}
    assert documents <= pieces  # every document is one piece of its own
    if covered is not None:
        for s, n in zip(starts, lens, strict=True):
            assert covered[s : s + n].all() == ((int(s), int(s + n)) in documents)


def test_a_pack_of_another_length_is_an_error_naming_the_file() -> None:
    packs = MdsPacks(MdsDataset([FIXTURES / "packed" / "books"]), seq_len=64, use_mask=False)
    with pytest.raises(MdsError, match=r"proc00-64/shard\.00000\.mds: sample 0: a pack of 32 tokens, .*seq_len is 64"):
        packs[0]
    with pytest.raises(MdsError, match="a pack of 32 tokens"):
        scan(MdsDataset([FIXTURES / "packed" / "books"]), seq_len=64)


def test_token_ids_outside_the_vocabulary_are_refused_with_file_and_sample() -> None:
    with pytest.raises(MdsError, match=r"oov/shard\.00000\.mds: sample 0: token id 1000000 does not fit .* 512"):
        scan(MdsDataset([FIXTURES / "misc" / "oov"]), vocab_size=512)
    packs = MdsPacks(MdsDataset([FIXTURES / "misc" / "oov"]), 32, use_mask=False)
    packs.vocab_size = 512
    with pytest.raises(MdsError, match="token id 1000000"):
        packs[0]
    assert scan(MdsDataset([FIXTURES / "packed" / "books"]), vocab_size=256).max_token_id == 255


def test_pickled_columns_are_refused_never_unpickled() -> None:
    with pytest.raises(MdsError, match="'input_ids' is pickled .* never unpickles"):
        MdsPacks(MdsDataset([FIXTURES / "misc" / "pkl"]), 32, use_mask=False)


def test_zstd_shards_are_decompressed_once_next_to_the_data(tmp_path: Path) -> None:
    web = fixture("packed/web", tmp_path)
    assert not (web / "shard.00000.mds").exists()
    first = MdsDataset([web])
    assert plain(first.value(3, "input_ids")) == EXPECTED["packed/web"][3]["input_ids"]
    raw = web / "shard.00000.mds"
    assert raw.stat().st_size == first.shards[0].raw_bytes
    stamp = raw.stat().st_mtime_ns
    assert plain(MdsDataset([web]).value(0, "indices")) == EXPECTED["packed/web"][0]["indices"]
    assert raw.stat().st_mtime_ns == stamp  # mapped again, not decompressed again
    assert not [p for p in web.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_zstd_shards_of_a_read_only_folder_go_to_the_cache_dir(tmp_path: Path, monkeypatch) -> None:
    web = fixture("packed/web", tmp_path)
    monkeypatch.setattr("prolong.data.mds.os.access", lambda path, mode: Path(path) != web)
    with pytest.raises(MdsError, match="read-only directory"):
        MdsDataset([web]).value(0, "input_ids")
    dataset = MdsDataset([web], cache_dir=tmp_path / "cache")
    assert plain(dataset.value(0, "input_ids")) == EXPECTED["packed/web"][0]["input_ids"]
    assert dataset.shards[0].file.is_relative_to(tmp_path / "cache") and not (web / "shard.00000.mds").exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("corrupt/truncated", r"truncated/shard\.00000\.mds: 748 bytes, .*index\.json says 788: truncated"),
        ("corrupt/flipped", r"flipped/shard\.00000\.mds: sha1 differs from .*: corrupted"),
        ("corrupt/zstd", r"zstd/shard\.00000\.mds\.zstd: decompresses to 0 bytes, .* says 1005"),
    ],
)
def test_corrupted_shards_are_refused_with_the_file_and_why(name: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(MdsError, match=message):
        scan(MdsDataset([fixture(name, tmp_path)]))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 787), st.integers(1, 255))
def test_any_damaged_byte_reads_or_fails_cleanly(tmp_path: Path, at: int, flip: int) -> None:
    """A flipped byte anywhere in a shard gives values or an MdsError, never another exception."""
    folder = tmp_path / f"damaged-{at}-{flip}"
    shutil.copytree(FIXTURES / "packed" / "books" / "proc00-64", folder)
    data = bytearray((folder / "shard.00000.mds").read_bytes())
    data[at] ^= flip
    (folder / "shard.00000.mds").write_bytes(bytes(data))
    try:
        packs = MdsPacks(MdsDataset([folder]), 32, use_mask=False)
        for i in range(len(packs)):
            packs[i]
    except MdsError:
        pass


def test_unpacked_documents_are_framed_like_tokenized_text() -> None:
    dataset = MdsDataset([FIXTURES / "raw" / "books"])
    expected = EXPECTED["raw/books"]
    first = expected[0]["input_ids"][0]
    docs = MdsDocuments(dataset, {}, bos=first, eos=1, sft=False)
    # BOS is added unless the document already starts with it; EOS always (no document ends with 1)
    assert docs.tokens(0).tolist() == expected[0]["input_ids"] + [1]
    assert docs.tokens(1).tolist() == [first] + expected[1]["input_ids"] + [1]
    assert docs.lengths.tolist() == [len(e["input_ids"]) + 2 - (i == 0) for i, e in enumerate(expected)]
    assert docs.tokens(1, 1, 4).tolist() == expected[1]["input_ids"][:3]
    assert docs.meta["counts"]["documents"] == 5
    web = MdsDocuments(MdsDataset([FIXTURES / "raw" / "web"]), {}, bos=None, eos=None, sft=False, max_documents=3)
    assert len(web) == 3 and web.tokens(2).dtype == np.uint32
    assert web.tokens(2).tolist() == EXPECTED["raw/web"][2]["input_ids"]
    with pytest.raises(MdsError, match="packed sequences"):
        MdsDocuments(MdsDataset([FIXTURES / "packed" / "books"]), {}, None, None, sft=False)


def test_a_folder_that_is_not_mds_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MdsError, match="no index.json"):
        MdsDataset([tmp_path])
    (tmp_path / "index.json").write_text('{"shards": []}')
    with pytest.raises(MdsError, match="not an MDS version 2 index"):
        MdsDataset([tmp_path])
