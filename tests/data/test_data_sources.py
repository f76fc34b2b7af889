"""Readers for every source type, repository documents, and bad input that names what is wrong."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from prolong.config import SourceSpec
from prolong.data.sources import DocumentStream
from prolong.errors import UserError


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read(kind: str = "long", seed: int = 0, **source) -> tuple[list, DocumentStream]:
    stream = DocumentStream([SourceSpec(**source)], kind, seed)
    return list(stream), stream


ROWS = [{"text": f"document {i}"} for i in range(5)]


def test_jsonl_plain_gz_zst_agree(tmp_path) -> None:
    import zstandard

    plain = write_jsonl(tmp_path / "a.jsonl", ROWS)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    for name in ("a.jsonl", "b.jsonl.gz", "c.jsonl.zst"):
        docs, stream = read(type="jsonl", path=str(tmp_path / name))
        assert docs == [r["text"] for r in ROWS], name
        assert stream.progress.done == stream.progress.total


def test_parquet_hf_disk_text_dir(tmp_path) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "x.parquet", row_group_size=2)
    assert read(type="parquet", path=str(tmp_path / "x.parquet"))[0] == [r["text"] for r in ROWS]
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "hf"))
    assert read(type="hf_disk", path=str(tmp_path / "hf"))[0] == [r["text"] for r in ROWS]
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "b.txt").write_text("beta")
    (tmp_path / "txt" / "a.txt").write_text("alpha")
    assert read(type="text_dir", path=str(tmp_path / "txt"))[0] == ["alpha", "beta"]


def test_repository_documents_seeded_order(tmp_path) -> None:
    rows = [{"repo": "r1", "path": f"f{i}.py", "content": f"code {i}"} for i in range(8)] + [
        {"repo": "r2", "path": "main.py", "content": "print()"}
    ]
    path = write_jsonl(tmp_path / "stack.jsonl", rows)
    spec = {
        "type": "jsonl",
        "path": str(path),
        "text_field": "content",
        "group_field": "repo",
        "name_field": "path",
    }
    docs, _ = read(seed=1, **spec)
    assert len(docs) == 2 and docs[1] == "main.py\nprint()"
    parts = docs[0].split("\n\n")
    assert sorted(parts) == sorted(f"f{i}.py\ncode {i}" for i in range(8))  # each file preceded by its path
    assert read(seed=1, **spec)[0] == docs  # same seed, same order
    orders = {tuple(read(seed=s, **spec)[0][0].split("\n\n")) for s in range(6)}
    assert len(orders) > 1  # the order is seeded, not alphabetical or by dependency


def test_code_repo_directories(tmp_path) -> None:
    for repo in ("alpha", "beta"):
        (tmp_path / repo / "pkg").mkdir(parents=True)
        (tmp_path / repo / "pkg" / "a.py").write_text(f"# {repo} a")
        (tmp_path / repo / "b.md").write_text(f"{repo} readme")
        (tmp_path / repo / "blob.bin").write_bytes(b"\xff\xfe\x00")
    (tmp_path / ".git").mkdir()
    docs, _ = read(type="code_repos", path=str(tmp_path))
    assert len(docs) == 2
    assert sorted(docs[0].split("\n\n")) == ["alpha/b.md\nalpha readme", "alpha/pkg/a.py\n# alpha a"]


def test_malformed_json_names_file_and_line(tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "ok"}\n{"text": broken}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:3: malformed JSON"):
        read(type="jsonl", path=str(path))


def test_missing_field_lists_existing_fields(tmp_path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [{"content": "a", "id": 1}])
    with pytest.raises(
        UserError, match=r"x\.jsonl:1: no field 'text'; the row has fields \['content', 'id'\]"
    ):
        read(type="jsonl", path=str(path))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"content": "a"}]), tmp_path / "x.parquet")
    with pytest.raises(UserError, match=r"no column 'text'; columns: \['content'\]"):
        read(type="parquet", path=str(tmp_path / "x.parquet"))


def test_empty_rows_are_counted_not_fatal(tmp_path) -> None:
    # (invalid UTF-8 and other bad input: tests/data/test_malformed.py)
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"text": "good"}\n{"text": "   "}\n{"text": "also good"}\n')
    docs, stream = read(type="jsonl", path=str(path))
    assert docs == ["good", "also good"]
    assert (stream.counts.empty, stream.counts.non_utf8, stream.counts.documents) == (1, 0, 2)


def test_chat_rows_and_bad_messages(tmp_path) -> None:
    good = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    docs, _ = read("sft", type="jsonl", path=str(write_jsonl(tmp_path / "c.jsonl", good)))
    assert docs == [good[0]["messages"]]
    bad = [{"messages": [{"speaker": "user", "text": "q"}]}]
    with pytest.raises(
        UserError, match=r"b\.jsonl:1: each message needs 'role' and 'content'; found \['speaker', 'text'\]"
    ):
        read("sft", type="jsonl", path=str(write_jsonl(tmp_path / "b.jsonl", bad)))


def test_missing_path_is_an_error(tmp_path) -> None:
    with pytest.raises(UserError, match="matches no file"):
        read(type="jsonl", path=str(tmp_path / "nothing*.jsonl"))


def test_max_documents(tmp_path) -> None:
    docs, _ = read(type="jsonl", path=str(write_jsonl(tmp_path / "a.jsonl", ROWS)), max_documents=2)
    assert len(docs) == 2
