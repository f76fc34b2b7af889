"""A corpus of malformed inputs, each run through the real `prolong data build` (the CLI entry point).

Each case asserts its located error (file and line, row, or domain, and what was expected) with exit
status 2 and no traceback, or its documented acceptance (prolong.data.text_files, prolong.data.sources),
and that a failed build leaves no shard a later run would read: the mixture refuses to open the stage,
and no tokenized corpus of a failed read is left for a rerun to reuse.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from prolong.cli import main
from prolong.config import load_recipe
from prolong.data.format import ShardReader, is_complete
from prolong.data.mixture import StageMixture, shard_path
from prolong.errors import UserError

PROSE = " ".join(["the value of the json object is a list of strings that encode the text"] * 8)
GOOD = {"text": PROSE}
CHAT = {"messages": [{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": PROSE}]}


def jsonl_bytes(*rows: Any) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


def parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@dataclass
class Case:
    """One malformed input: `make(tmp)` writes it and returns the source spec."""

    make: Callable[[Path], dict[str, Any]]
    error: str | None = None  # regex of the located error; None: the build is expected to succeed
    kind: str = "short"  # the domain kind
    read_error: bool = True  # the error is found while reading (no tokenized corpus may be left)
    check: Callable[[dict[str, Any]], None] | None = None  # on the meta of the built shard
    seq_len: int | None = None  # default: 64, or 256 for sft (conversations fit whole)


def jsonl_source(name: str, data: bytes, **fields: Any) -> Callable[[Path], dict[str, Any]]:
    return lambda tmp: {"type": "jsonl", "path": str(write(tmp / "raw" / name, data)), **fields}


def text_dir(files: dict[str, bytes], kind: str = "text_dir") -> Callable[[Path], dict[str, Any]]:
    def make(tmp: Path) -> dict[str, Any]:
        root = tmp / "raw" / "tree"
        root.mkdir(parents=True)
        for name, data in files.items():
            write(root / name, data)
        return {"type": kind, "path": str(root)}

    return make


def parquet_source(rows: list[dict[str, Any]], raw: bytes | None = None) -> Callable[[Path], dict[str, Any]]:
    def make(tmp: Path) -> dict[str, Any]:
        path = tmp / "raw" / "x.parquet"
        path.parent.mkdir(parents=True)
        if raw is not None:
            path.write_bytes(raw)
        else:
            parquet(path, rows)
        return {"type": "parquet", "path": str(path)}

    return make


def truncated_parquet(tmp: Path) -> dict[str, Any]:
    spec = parquet_source([GOOD] * 20)(tmp)
    path = Path(spec["path"])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return spec


def hf_source(rows: list[dict[str, Any]] | None) -> Callable[[Path], dict[str, Any]]:
    def make(tmp: Path) -> dict[str, Any]:
        path = tmp / "raw" / "hf"
        if rows is None:  # a directory of JSONL files, not a dataset saved with save_to_disk
            write(path / "data.jsonl", jsonl_bytes(GOOD))
        else:
            import datasets

            datasets.Dataset.from_list(rows).save_to_disk(str(path))
        return {"type": "hf_disk", "path": str(path)}

    return make


def gz_truncated() -> bytes:
    data = gzip.compress(jsonl_bytes(*[GOOD] * 200))
    return data[: len(data) // 2]


def gz_bad_crc() -> bytes:
    data = bytearray(gzip.compress(jsonl_bytes(*[GOOD] * 20)))
    data[-8] ^= 0xFF  # the CRC-32 of the trailer: the data decompresses, the check at the end fails
    return bytes(data)


def zst_truncated() -> bytes:
    data = zstd(jsonl_bytes(*[{"text": f"{PROSE} {i}"} for i in range(300)]))
    return data[: len(data) - 40]


def documents(n: int, key: str = "source_documents") -> Callable[[dict[str, Any]], None]:
    def check(meta: dict[str, Any]) -> None:
        assert meta[key] == n, meta

    return check


def non_utf8(n: int, docs: int) -> Callable[[dict[str, Any]], None]:
    def check(meta: dict[str, Any]) -> None:
        assert (meta["non_utf8_documents"], meta["source_documents"]) == (n, docs), meta

    return check


BINARY = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8"
LATIN1 = "café crème brûlée ".encode("latin-1") * 10

CASES: dict[str, Case] = {
    # ---------------------------------------------------------------- JSONL
    "jsonl-malformed-json": Case(
        jsonl_source("bad.jsonl", jsonl_bytes(GOOD, GOOD) + b'{"text": broken}\n'),
        r"bad\.jsonl:3: malformed JSON \(Expecting value at column 10\)",
    ),
    "jsonl-array-line": Case(
        jsonl_source("a.jsonl", jsonl_bytes(["text", PROSE])), r"a\.jsonl:1: expected a JSON object, got list"
    ),
    "jsonl-missing-field": Case(
        jsonl_source("m.jsonl", jsonl_bytes(GOOD, {"body": PROSE, "id": 2})),
        r"m\.jsonl:2: no field 'text'; the row has fields \['body', 'id'\]",
    ),
    "jsonl-text-is-a-number": Case(
        jsonl_source("n.jsonl", jsonl_bytes(GOOD, {"text": 42})),
        r"n\.jsonl:2: field 'text' should be text, got int",
    ),
    "jsonl-text-is-null": Case(
        jsonl_source("z.jsonl", jsonl_bytes({"text": None})),
        r"z\.jsonl:1: field 'text' should be text, got NoneType",
    ),
    "jsonl-invalid-utf8": Case(
        jsonl_source("u.jsonl", jsonl_bytes(GOOD) + b'{"text": "caf\xe9 au lait"}\n'),
        r"u\.jsonl:2: invalid UTF-8 \(byte 0xe9 at column 14\).*convert the file",
    ),
    "jsonl-lone-surrogate": Case(
        jsonl_source("s.jsonl", jsonl_bytes(GOOD) + b'{"text": "broken \\ud83d emoji"}\n'),
        r"s\.jsonl:2: field 'text' holds a lone surrogate \(U\+D83D at character 7\)",
    ),
    "jsonl-bom-at-start-accepted": Case(
        jsonl_source("bom.jsonl", b"\xef\xbb\xbf" + jsonl_bytes(GOOD, GOOD, GOOD)), check=documents(3)
    ),
    "jsonl-bom-mid-file": Case(
        jsonl_source("cat.jsonl", jsonl_bytes(GOOD, GOOD) + b"\xef\xbb\xbf" + jsonl_bytes(GOOD)),
        r"cat\.jsonl:3: malformed JSON \(Unexpected UTF-8 BOM",
    ),
    "jsonl-truncated-last-line": Case(
        jsonl_source("cut.jsonl", jsonl_bytes(GOOD, GOOD) + b'{"text": "the story so f'),
        r"cut\.jsonl:3: malformed JSON \(Unterminated string starting at column 10\)",
    ),
    "jsonl-crlf-and-blank-lines-accepted": Case(
        jsonl_source("crlf.jsonl", jsonl_bytes(GOOD).replace(b"\n", b"\r\n") * 2 + b"\r\n\n"),
        check=documents(2),
    ),
    "jsonl-empty-file": Case(
        jsonl_source("empty.jsonl", b""),
        r"domain 'd': its sources give no document to train on \(.*empty\.jsonl \(jsonl\): nothing in them\)",
        read_error=False,
    ),
    "jsonl-only-blank-lines": Case(
        jsonl_source("blank.jsonl", b"\n  \n\n"),
        r"domain 'd': its sources give no document",
        read_error=False,
    ),
    "jsonl-all-documents-empty": Case(
        jsonl_source("ws.jsonl", jsonl_bytes({"text": ""}, {"text": "  \n "}, {"text": "\t"})),
        r"domain 'd': its sources give no document .*: 3 empty documents dropped\).*check its text_field",
        read_error=False,
    ),
    "jsonl-groups-not-contiguous": Case(
        jsonl_source(
            "repos.jsonl",
            jsonl_bytes(
                {"repo": "a", "text": PROSE}, {"repo": "b", "text": PROSE}, {"repo": "a", "text": PROSE}
            ),
            group_field="repo",
        ),
        r"repos\.jsonl:3: rows of group repo='a' are not contiguous; sort the source by 'repo'",
    ),
    "jsonl-group-field-missing": Case(
        jsonl_source("g.jsonl", jsonl_bytes({"repo": "a", "text": PROSE}, GOOD), group_field="repo"),
        r"g\.jsonl:2: no field 'repo'",
    ),
    "jsonl-glob-matches-nothing": Case(
        lambda tmp: {"type": "jsonl", "path": str(tmp / "raw" / "nothing-*.jsonl")},
        r"source path '.*nothing-\*\.jsonl' matches no file",
    ),
    # ---------------------------------------------------------------- .jsonl.gz
    "gz-truncated": Case(
        jsonl_source("t.jsonl.gz", gz_truncated()),
        r"t\.jsonl\.gz: not a complete gzip file \(after line \d+, at compressed byte [\d,]+: Compressed file "
        r"ended before the end-of-stream marker was reached\)",
    ),
    "gz-not-gzip": Case(
        jsonl_source("plain.jsonl.gz", jsonl_bytes(GOOD)),
        r"plain\.jsonl\.gz: not a complete gzip file \(after line 0.*Not a gzipped file.*or rename it",
    ),
    "gz-bad-checksum": Case(
        jsonl_source("c.jsonl.gz", gz_bad_crc()),
        r"c\.jsonl\.gz: not a complete gzip file \(after line 20.*CRC check failed",
    ),
    "gz-malformed-json-inside": Case(
        jsonl_source("j.jsonl.gz", gzip.compress(jsonl_bytes(GOOD) + b"{oops}\n")),
        r"j\.jsonl\.gz:2: malformed JSON",
    ),
    "gz-bom-accepted": Case(
        jsonl_source("b.jsonl.gz", gzip.compress(b"\xef\xbb\xbf" + jsonl_bytes(GOOD, GOOD))),
        check=documents(2),
    ),
    # ---------------------------------------------------------------- .jsonl.zst
    "zst-not-zstd": Case(
        jsonl_source("plain.jsonl.zst", jsonl_bytes(GOOD)),
        r"plain\.jsonl\.zst: not a complete zstd file \(after line 0.*Unknown frame descriptor",
    ),
    "zst-truncated": Case(
        jsonl_source("t.jsonl.zst", zst_truncated()),
        r"t\.jsonl\.zst: not a complete zstd file \(after line \d+.*ends inside a frame",
    ),
    "zst-invalid-utf8": Case(
        jsonl_source("u.jsonl.zst", zstd(jsonl_bytes(GOOD, GOOD) + b'{"text": "\xff\xfe"}\n')),
        r"u\.jsonl\.zst:3: invalid UTF-8 \(byte 0xff at column 11\)",
    ),
    "zst-two-frames-accepted": Case(
        jsonl_source("two.jsonl.zst", zstd(jsonl_bytes(GOOD, GOOD)) + zstd(jsonl_bytes(GOOD))),
        check=documents(3),
    ),
    # ---------------------------------------------------------------- Parquet
    "parquet-not-parquet": Case(
        parquet_source([], raw=jsonl_bytes(GOOD)), r"x\.parquet: not a readable Parquet file \(.*magic bytes"
    ),
    "parquet-truncated": Case(truncated_parquet, r"x\.parquet: not a readable Parquet file"),
    "parquet-missing-column": Case(
        parquet_source([{"body": PROSE}]), r"x\.parquet: no column 'text'; columns: \['body'\]"
    ),
    "parquet-int-column": Case(
        parquet_source([{"text": 7}]), r"x\.parquet: row 1: field 'text' should be text, got int"
    ),
    "parquet-null-text": Case(
        parquet_source([GOOD, {"text": None}]),
        r"x\.parquet: row 2: field 'text' should be text, got NoneType",
    ),
    # ---------------------------------------------------------------- text directories
    "text-dir-empty": Case(
        text_dir({}), r"domain 'd': its sources give no document .*tree \(text_dir\)", read_error=False
    ),
    "text-dir-only-binary": Case(
        text_dir({"a.png": BINARY, "b.txt": LATIN1}),
        r"domain 'd': its sources give no document .*tree \(text_dir\): 2 files skipped as not UTF-8 text\)",
        read_error=False,
    ),
    "text-dir-binary-skipped-and-counted": Case(
        text_dir(
            {
                "a.txt": PROSE.encode(),
                "b.png": BINARY,
                "c.txt": LATIN1,
                "d.md": b"\xef\xbb\xbf" + PROSE.encode(),
            }
        ),
        check=non_utf8(2, 2),
    ),
    # ---------------------------------------------------------------- code-repository directories
    "code-repos-path-is-a-file": Case(
        lambda tmp: {"type": "code_repos", "path": str(write(tmp / "raw" / "repo.py", b"print()\n"))},
        r"repo\.py: a code_repos source is a directory whose subdirectories are repositories",
    ),
    "code-repos-no-repositories": Case(
        text_dir({"README.md": PROSE.encode()}, "code_repos"),
        r"domain 'd': its sources give no document .*tree \(code_repos\)",
        read_error=False,
    ),
    "code-repos-only-binary-and-hidden": Case(
        text_dir(
            {"r1/logo.png": BINARY, "r1/.git/config": PROSE.encode(), ".hidden/a.py": PROSE.encode()},
            "code_repos",
        ),
        r"domain 'd': its sources give no document .*\(code_repos\): 1 empty documents dropped, 1 files skipped as not UTF-8 text\)",
        read_error=False,
    ),
    "code-repos-binary-skipped": Case(
        text_dir({"r1/a.py": PROSE.encode(), "r1/b.bin": BINARY, "r2/c.py": PROSE.encode()}, "code_repos"),
        check=non_utf8(1, 2),
    ),
    # ---------------------------------------------------------------- chat / SFT files
    "chat-messages-not-a-list": Case(
        jsonl_source("c.jsonl", jsonl_bytes(CHAT, {"messages": "hello"})),
        r"c\.jsonl:2: messages must be a non-empty list of \{role, content\}, got str",
        kind="sft",
    ),
    "chat-messages-empty": Case(
        jsonl_source("c.jsonl", jsonl_bytes({"messages": []})),
        r"c\.jsonl:1: messages must be a non-empty list of \{role, content\}, got an empty list",
        kind="sft",
    ),
    "chat-message-without-role": Case(
        jsonl_source("c.jsonl", jsonl_bytes({"messages": [{"content": "hi"}]})),
        r"c\.jsonl:1: each message needs 'role' and 'content'; found \['content'\]",
        kind="sft",
    ),
    "chat-content-null": Case(
        jsonl_source(
            "c.jsonl",
            jsonl_bytes(
                {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]}
            ),
        ),
        r"c\.jsonl:1: message 2: 'content' should be text, got NoneType",
        kind="sft",
    ),
    "chat-content-parts-list": Case(
        jsonl_source(
            "c.jsonl",
            jsonl_bytes({"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}]}),
        ),
        r"c\.jsonl:1: message 1: 'content' should be text, got list",
        kind="sft",
    ),
    "chat-lone-surrogate": Case(
        jsonl_source(
            "c.jsonl",
            b'{"messages": [{"role": "user", "content": "\\udc00"}, {"role": "assistant", "content": "a"}]}\n',
        ),
        r"c\.jsonl:1: field 'messages' holds a lone surrogate \(U\+DC00",
        kind="sft",
    ),
    "chat-no-assistant-reply": Case(
        jsonl_source(
            "c.jsonl",
            jsonl_bytes(
                {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}
            ),
        ),
        r"domain 'd': its sources give no document .*: 1 empty documents dropped\).*check its messages_field",
        kind="sft",
        read_error=False,
    ),
    "chat-all-longer-than-seq-len": Case(
        jsonl_source("c.jsonl", jsonl_bytes(CHAT, CHAT)),
        r"stage 's', domain 'd'@64: no sequence to write: each of its 2 conversations is longer than seq_len 64",
        kind="sft",
        read_error=False,
        seq_len=64,
    ),
    # ---------------------------------------------------------------- Hugging Face datasets on disk
    "hf-disk-not-a-dataset": Case(
        hf_source(None), r"hf: not a Hugging Face dataset saved with save_to_disk .*use type jsonl or parquet"
    ),
    "hf-disk-missing-field": Case(
        hf_source([{"body": PROSE}]), r"hf: row 1: no field 'text'; the row has fields \['body'\]"
    ),
    # ---------------------------------------------------------------- lengths
    "long-no-document-reaches-doc-len": Case(
        jsonl_source("short.jsonl", jsonl_bytes({"text": "a few words"}, {"text": "and a few more"})),
        r"stage 's', domain 'd'@64: no sequence to write: none of its 2 documents reaches 64 tokens",
        kind="long",
        read_error=False,
    ),
    "short-less-than-one-sequence": Case(
        jsonl_source("tiny.jsonl", jsonl_bytes({"text": "a few words"})),
        r"stage 's', domain 'd'@64: no sequence to write: its 1 documents hold \d+ tokens, less than one sequence",
        read_error=False,
    ),
}


def write_recipe(tmp: Path, tokenizer_dir: Path, source: dict[str, Any], kind: str, seq_len: int) -> Path:
    stage = {
        "name": "s",
        "seq_len": seq_len,
        "tokens_per_step": seq_len,
        "steps": 1,
        "lr": 1e-3,
        "min_lr": 0,
        "mixture": [{"domain": "d", "proportion": 1.0}],
    }
    if kind == "sft":
        stage["kind"] = "sft"
    recipe = {
        "name": "malformed",
        "output_dir": str(tmp / "run"),
        "model": {"init": {}},
        "tokenizer": {"path": str(tokenizer_dir)},
        "data": {
            "shard_dir": str(tmp / "shards"),
            "domains": [{"name": "d", "kind": kind, "sources": [source]}],
        },
        "stages": [stage],
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def build(recipe: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`prolong data build RECIPE` in this process: its exit status and stderr (a traceback would raise)."""
    capsys.readouterr()
    status = main(["data", "build", str(recipe), "--workers", "1"])
    return status, capsys.readouterr().err


def assert_nothing_to_read(recipe_path: Path, read_error: bool) -> None:
    """No shard of the failed build exists or opens; a failed read left no tokenized corpus to reuse."""
    recipe = load_recipe(recipe_path)
    stage = recipe.stages[0]
    target = shard_path(recipe.data.shard_dir, stage.name, "d", stage.seq_len)
    assert not target.exists()
    with pytest.raises(UserError, match="shard missing or incomplete"):
        StageMixture.open(recipe.data.shard_dir, stage, recipe.seed)
    if read_error:
        assert not list(Path(recipe.data.shard_dir).glob(".tokenized/*/meta.json"))


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_input(name: str, tmp_path: Path, tokenizer_dir: Path, capsys) -> None:
    case = CASES[name]
    seq_len = case.seq_len or (256 if case.kind == "sft" else 64)
    recipe = write_recipe(tmp_path, tokenizer_dir, case.make(tmp_path), case.kind, seq_len)
    status, err = build(recipe, capsys)
    assert "Traceback" not in err
    if case.error is None:
        assert status == 0, err
        loaded = load_recipe(recipe)
        shard = shard_path(loaded.data.shard_dir, "s", "d", seq_len)
        assert is_complete(shard) and len(ShardReader(shard)) > 0
        if case.check is not None:
            case.check(ShardReader(shard).meta)
        return
    assert status == 2, err
    message = err.split("error: ", 1)[-1]
    assert re.search(case.error, " ".join(message.split())), message
    assert_nothing_to_read(recipe, case.read_error)
    if not case.read_error:  # the tokenized corpus was kept: a rerun reuses it and fails the same way
        assert build(recipe, capsys)[0] == 2


def test_the_corpus_covers_every_source_type() -> None:
    assert len(CASES) >= 30
    kinds = {name.split("-")[0] for name in CASES}
    assert {"jsonl", "gz", "zst", "parquet", "text", "code", "chat", "hf"} <= kinds


def test_a_failed_rebuild_removes_the_out_of_date_shard(tmp_path: Path, tokenizer_dir: Path, capsys) -> None:
    source = jsonl_source("web.jsonl", jsonl_bytes(GOOD, GOOD, GOOD))(tmp_path)
    recipe = write_recipe(tmp_path, tokenizer_dir, source, "short", 64)
    assert build(recipe, capsys)[0] == 0
    loaded = load_recipe(recipe)
    assert len(StageMixture.open(loaded.data.shard_dir, loaded.stages[0], loaded.seed).components) == 1
    Path(source["path"]).write_bytes(jsonl_bytes(GOOD) + b"{not json\n")  # the source changes, badly
    status, err = build(recipe, capsys)
    assert status == 2 and re.search(r"web\.jsonl:2: malformed JSON", err)
    assert "removing out-of-date shard" in err
    assert_nothing_to_read(recipe, read_error=False)  # the old corpus's tokenized cache stays valid


def test_non_utf8_files_are_reported_by_the_build(tmp_path: Path, tokenizer_dir: Path, capsys) -> None:
    source = text_dir({"a.txt": PROSE.encode(), "b.txt": LATIN1})(tmp_path)
    status, err = build(write_recipe(tmp_path, tokenizer_dir, source, "short", 64), capsys)
    assert status == 0 and "d: skipped 1 files that are not UTF-8 text" in " ".join(err.split())


# ------------------------------------------------------------------------ prolong recipe validate
def test_recipe_validate_checks_model_and_tokenizer_directories(
    tmp_path: Path, tokenizer_dir: Path, capsys
) -> None:
    recipe = yaml.safe_load(
        write_recipe(tmp_path, tokenizer_dir, {"type": "jsonl", "path": "x"}, "short", 64).read_text()
    )
    path = tmp_path / "r.yaml"

    def validate(**changes: Any) -> tuple[int, str]:
        data = {**recipe, **changes}
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        capsys.readouterr()
        status = main(["recipe", "validate", str(path)])
        return status, " ".join(capsys.readouterr().out.split())

    assert validate()[0] == 0
    status, out = validate(tokenizer={"path": str(tmp_path / "no-such-tokenizer")})
    assert status == 2 and re.search(
        r"tokenizer\.path: .*no-such-tokenizer is not a tokenizer directory: it does not exist", out
    )
    status, out = validate(tokenizer={"path": str(tmp_path)})
    assert status == 2 and "is not a tokenizer directory (none of tokenizer.json" in out
    status, out = validate(model={"path": str(tmp_path / "no-model")}, tokenizer={})
    assert status == 2 and re.search(
        r"model\.path: .*no-model is not a model directory: it does not exist", out
    )
    assert "tokenizer (model.path)" not in out  # one problem, said once
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    status, out = validate(model={"path": str(tmp_path / "ckpt")})
    assert status == 2 and "holds no *.safetensors weights" in out
    capsys.readouterr()
    assert main(["recipe", "validate", "--no-check-paths", str(path)]) == 0


# ------------------------------------------------------------------------ every text input, one reader
def _tokenizer_train(path: Path) -> None:
    from prolong.data.commands import train_tokenizer

    train_tokenizer(str(path.parent / "tok"), str(path), 300)


def _perplexity_texts(path: Path) -> None:
    from prolong.eval.perplexity import read_texts

    list(read_texts(path))


def _helmet_rows(path: Path) -> None:
    from prolong.eval.helmet_files import read_jsonl

    read_jsonl(path, "icl")


def _essay_words(path: Path) -> None:
    from prolong.eval.words import essay_words

    essay_words(str(path))


@pytest.mark.parametrize("reader", [_tokenizer_train, _perplexity_texts, _helmet_rows, _essay_words])
@pytest.mark.parametrize(
    ("data", "error"),
    [
        (
            jsonl_bytes(GOOD) + b"{oops\n",
            r"in\.jsonl:2: malformed JSON",
        ),  # tokenizer training used to skip it
        (
            jsonl_bytes(GOOD) + b'{"text": "\xc3("}\n',
            r"in\.jsonl:2: invalid UTF-8 \(byte 0xc3 at column 11\)",
        ),
    ],
)
def test_every_text_input_reports_bad_lines_the_same_way(
    tmp_path: Path, reader, data: bytes, error: str
) -> None:
    path = write(tmp_path / "in.jsonl", data)
    with pytest.raises(UserError, match=error):
        reader(path)


def test_build_with_a_missing_tokenizer_is_a_clear_error(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(
        tmp_path, tmp_path / "no-tokenizer", jsonl_source("a.jsonl", jsonl_bytes(GOOD))(tmp_path), "short", 64
    )
    status, err = build(recipe, capsys)
    assert status == 2 and "no-tokenizer is not a tokenizer directory: it does not exist" in " ".join(
        err.split()
    )
