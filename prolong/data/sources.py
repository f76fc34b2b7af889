"""Raw corpora read as streams of documents (never the whole corpus in memory).

A document is a string (pretraining domains), or in sft domains a list of {role, content} messages or
a (prompt, completion) pair of strings (sources with `prompt_field`).
Readers: JSONL (.jsonl, .jsonl.gz, .jsonl.zst), Parquet (one row group at a time), Hugging Face
datasets saved with `save_to_disk`, directories of text files, directories of code repositories.
Rows sharing `group_field` (contiguous, e.g. sorted by repository) become one document: each row
preceded by its `name_field`, rows in a seeded random order (ProLong: files not ordered by dependency).

Bad input (files are read by prolong.data.text_files, which describes the rules):
- stops the build with a UserError naming the file and line (or row): malformed JSON, a line that is
  not an object, a missing field, text that is not a string, invalid UTF-8 or a lone-surrogate escape
  (not valid Unicode), a truncated or corrupt .gz/.zst, an unreadable Parquet file or dataset;
- is accepted: a UTF-8 byte-order mark at the start of a file; blank lines;
- is counted, not fatal: empty documents (dropped), and in text and code-repository directories the
  files that are not UTF-8 text (binary files such as images, skipped). A domain left with no document
  is an error of `prolong data build`, naming the domain and its sources.
"""

from __future__ import annotations

import glob
import hashlib
import os
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prolong.config import SourceSpec
from prolong.data.chat import check_messages
from prolong.data.text_files import jsonl_records, read_text_file
from prolong.errors import UserError

Document = str | list[dict[str, str]] | tuple[str, str]


def document_text(document: Document) -> str:
    """The plain text of a document of any kind (for tokenizer training and batch sizing)."""
    if isinstance(document, str):
        return document
    if isinstance(document, tuple):  # a prompt/completion pair
        return "".join(document)
    return "\n".join(turn["content"] for turn in document)


# Files a code repository is made of: text files below this size (larger ones are data dumps).
MAX_REPO_FILE_BYTES = 1 << 20


@dataclass
class SourceCounts:
    """What a stream saw: documents yielded and documents skipped (and why)."""

    documents: int = 0
    empty: int = 0
    non_utf8: int = 0  # files of text/code-repository directories skipped as not UTF-8 text (binary)

    def as_dict(self) -> dict[str, int]:
        """Plain dict (for meta.json)."""
        return asdict(self)


@dataclass
class Row:
    """One raw record and where it came from (for error messages)."""

    fields: dict[str, Any]
    where: str


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from any printable parts, the same in every process and Python version."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def expand_paths(pattern: str) -> list[Path]:
    """Files matching a path or glob, sorted (directories for dir sources are returned as is)."""
    matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    if not matches:
        raise UserError(f"source path {pattern!r} matches no file (relative paths are from {os.getcwd()})")
    return [Path(m) for m in matches]


def source_fingerprint(sources: list[SourceSpec]) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every matched file or directory (of an MDS dataset: its index and shard
    files): a changed source invalidates caches."""
    from prolong.data.mds import MdsDataset

    prints = []
    for source in sources:
        for path in expand_paths(source.path):
            if source.type == "mds":
                prints += MdsDataset([path]).fingerprint()
            else:
                prints.append((str(path), path.stat().st_size if path.is_file() else 0, path.stat().st_mtime_ns))
    return prints


class _Progress:
    """Bytes of the source files consumed so far (for tokens/s and ETA)."""

    def __init__(self) -> None:
        self.done = 0
        self.total = 0


class DocumentStream:
    """Documents of a list of sources, in a fixed order; `counts` and `progress` fill as it is read."""

    def __init__(self, sources: list[SourceSpec], kind: str, seed: int = 0) -> None:
        self.sources = sources
        self.chat = kind == "sft"
        self.seed = seed
        self.counts = SourceCounts()
        self.progress = _Progress()
        for source in sources:
            for path in expand_paths(source.path):
                self.progress.total += _size_of(path)

    def __iter__(self) -> Iterator[Document]:
        for source in self.sources:
            for produced, document in enumerate(self._documents(source)):
                if source.max_documents is not None and produced >= source.max_documents:
                    break
                self.counts.documents += 1
                yield document

    # ------------------------------------------------------------------ rows -> documents
    def _documents(self, source: SourceSpec) -> Iterator[Document]:
        if source.type == "text_dir":
            yield from self._text_dir(source)
        elif source.type == "code_repos":
            yield from self._code_repos(source)
        elif source.group_field is not None:
            yield from self._grouped(source)
        else:
            for row in self._rows(source):
                document = self._document(row, source)
                if document is not None:
                    yield document

    def _document(self, row: Row, source: SourceSpec) -> Document | None:
        """The document in a row, or None when it is empty (counted)."""
        if self.chat and source.prompt_field:
            prompt, completion = _text_field(row, source.prompt_field), _text_field(row, source.completion_field)
            if not completion.strip():
                self.counts.empty += 1
                return None
            return prompt, completion
        if self.chat:
            messages = _field(row, source.messages_field)
            conversation = check_messages(messages, row.where)
            for turn in conversation:
                _require_unicode(turn["content"], row.where, source.messages_field)
            if not any(t["content"].strip() for t in conversation if t["role"] == "assistant"):
                self.counts.empty += 1
                return None
            return conversation
        return self._checked_text(_text_field(row, source.text_field))

    def _checked_text(self, text: str) -> str | None:
        if not text.strip():
            self.counts.empty += 1
            return None
        return text

    def _grouped(self, source: SourceSpec) -> Iterator[str]:
        """Contiguous rows with the same group value joined into one document, in a seeded order."""
        group_key: Any = None
        members: list[tuple[str, str]] = []
        finished: set[Any] = set()
        for row in self._rows(source):
            key = _field(row, source.group_field)  # type: ignore[arg-type]
            if key != group_key:
                if members:
                    finished.add(group_key)
                    document = self._join_group(group_key, members)
                    if document is not None:
                        yield document
                if key in finished:
                    raise UserError(
                        f"{row.where}: rows of group {source.group_field}={key!r} are not contiguous; "
                        f"sort the source by {source.group_field!r} so each group is read in one run"
                    )
                group_key, members = key, []
            text = _text_field(row, source.text_field)
            name = str(_field(row, source.name_field)) if source.name_field else ""
            members.append((name, text))
        if members:
            document = self._join_group(group_key, members)
            if document is not None:
                yield document

    def _join_group(self, key: Any, members: list[tuple[str, str]]) -> str | None:
        random.Random(stable_seed(self.seed, "group", key)).shuffle(members)
        parts = [f"{name}\n{text}" if name else text for name, text in members if text.strip()]
        return self._checked_text("\n\n".join(parts))

    def _text_dir(self, source: SourceSpec) -> Iterator[str]:
        for root in expand_paths(source.path):
            files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
            for file in files:
                text = self._read_text(file)
                self.progress.done += _size_of(file)
                if text is not None and (text := self._checked_text(text)) is not None:
                    yield text

    def _code_repos(self, source: SourceSpec) -> Iterator[str]:
        """Each subdirectory is one repository: its files, each preceded by its path, seeded order."""
        for root in expand_paths(source.path):
            if not root.is_dir():
                raise UserError(
                    f"{root}: a code_repos source is a directory whose subdirectories are repositories; "
                    "this is a file (use type: text_dir or jsonl)"
                )
            for repo in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
                files = sorted(
                    p
                    for p in repo.rglob("*")
                    if p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(repo).parts)
                    and p.stat().st_size <= MAX_REPO_FILE_BYTES
                )
                members = []
                for file in files:
                    text = self._read_text(file)
                    self.progress.done += _size_of(file)
                    if text is not None and text.strip():
                        members.append((f"{repo.name}/{file.relative_to(repo).as_posix()}", text))
                document = self._join_group(repo.name, members) if members else None
                if document is not None:
                    yield document
                elif not members:
                    self.counts.empty += 1

    def _read_text(self, file: Path) -> str | None:
        """A file of a directory tree: its text, or None (counted) when it is not UTF-8 text."""
        text = read_text_file(file, binary_ok=True)
        if text is None:
            self.counts.non_utf8 += 1
        return text

    # ------------------------------------------------------------------ file formats -> rows
    def _rows(self, source: SourceSpec) -> Iterator[Row]:
        for path in expand_paths(source.path):
            if source.type == "jsonl":
                yield from self._jsonl_rows(path)
            elif source.type == "parquet":
                yield from self._parquet_rows(path, source)
            elif source.type == "hf_disk":
                yield from self._hf_rows(path)
            else:
                raise UserError(f"source type {source.type!r} has no rows")

    def _jsonl_rows(self, path: Path) -> Iterator[Row]:
        start = self.progress.done

        def progress(read: int) -> None:
            self.progress.done = start + read

        for where, fields in jsonl_records(path, progress):
            yield Row(fields, where)
        self.progress.done = start + _size_of(path)

    def _parquet_rows(self, path: Path, source: SourceSpec) -> Iterator[Row]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as error:
            raise UserError(f"{path}: not a readable Parquet file ({error})") from None
        names = file.schema_arrow.names
        wanted = [source.messages_field] if self.chat else [source.text_field]
        if self.chat and source.prompt_field:
            wanted = [source.prompt_field, source.completion_field]
        wanted += [f for f in (source.group_field, source.name_field) if f]
        for name in wanted:
            if name not in names:
                raise UserError(f"{path}: no column {name!r}; columns: {names}")
        row_no = 0
        for group in range(file.num_row_groups):
            try:
                table = file.read_row_group(group, columns=wanted)
            except (pa.ArrowException, OSError) as error:
                raise UserError(f"{path}: row group {group} (after row {row_no}) is unreadable ({error})") from None
            for fields in table.to_pylist():
                row_no += 1
                yield Row(fields, f"{path}: row {row_no}")
            self.progress.done += file.metadata.row_group(group).total_byte_size
            del table

    def _hf_rows(self, path: Path) -> Iterator[Row]:
        import datasets

        try:
            loaded = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError, OSError) as error:
            raise UserError(
                f"{path}: not a Hugging Face dataset saved with save_to_disk ({error}); for files use type "
                "jsonl or parquet"
            ) from None
        splits = [loaded[k] for k in sorted(loaded)] if isinstance(loaded, datasets.DatasetDict) else [loaded]
        for split in splits:
            for row_no, fields in enumerate(split, start=1):  # arrow-backed: rows are read lazily
                yield Row(fields, f"{path}: row {row_no}")
        self.progress.done += _size_of(path)


def _field(row: Row, name: str) -> Any:
    if name not in row.fields:
        raise UserError(f"{row.where}: no field {name!r}; the row has fields {sorted(row.fields)}")
    return row.fields[name]


def _text_field(row: Row, name: str) -> str:
    text = _field(row, name)
    if not isinstance(text, str):
        raise UserError(f"{row.where}: field {name!r} should be text, got {type(text).__name__}")
    return _require_unicode(text, row.where, name)


def _require_unicode(text: str, where: str, name: str) -> str:
    """`text`, unless it holds a lone surrogate (a \\ud800-style JSON escape) that no tokenizer encodes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise UserError(
            f"{where}: field {name!r} holds a lone surrogate (U+{ord(text[error.start]):04X} at character "
            f"{error.start}), which is not valid Unicode; fix the escape in the source"
        ) from None
    return text


def _size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
