"""Reading mosaicml-streaming MDS datasets (ProLong's released data) without mosaicml-streaming.

Layout. A dataset directory holds `index.json`: {"version": 2, "shards": [...]}. Each shard entry names
its file (`raw_data.basename`, relative to the directory; a merged index names files in sub-folders,
"0-0/shard.00000.mds"), its columns (`column_names`, `column_encodings`, `column_sizes`: a byte size
for fixed-size columns, null otherwise), its sample count and its compression (`zip_data`: the file
actually stored, e.g. shard.00000.mds.zstd). A directory without index.json is the union of the datasets
below it, in sorted order (ProLong's <domain>/procNN-64/ folders); below an index.json nothing else is
read (its sub-folders are the parts it lists).

Shard file: uint32 sample count n, uint32 offsets[n + 1] (byte offset of each sample in the file, the
last one the file size), the writer's settings as JSON, then the samples. A sample: one uint32 size per
variable-size column, in column order, then every column's bytes, in column order.

Encodings read: ndarray (dtype and shape in the encoding, "ndarray:uint32:64", or else in each sample:
a dtype byte, a byte ndim << 2 | shape width, the shape), str, bytes, json, str_int, str_float, int
(int64) and the fixed-size scalars uint8 ... float64. `pkl` is refused: unpickling runs code. Image
encodings are not token data and are refused too. A column the reader does not need is never decoded.

No copy of the data: shards are memory-mapped and a column value is a numpy view of the mapping. A
compressed shard (zstd, gz, bz2) is decompressed once, atomically (prolong.publish), to its raw file
name next to it, as mosaicml-streaming does, or into `cache_dir` when the data directory is read-only,
and mapped from there. Corruption is detected from sizes and offsets (always, when a shard is opened),
from the index's hashes when hashlib knows them (sha1, sha256, md5, ...: during `scan`; xxhash ones are
not checked), and from each sample's own header when it is read.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import mmap
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prolong.data.format import FORMAT_VERSION, TOKEN_DTYPE, PackedSequence
from prolong.errors import UserError

INDEX = "index.json"
LINK_FORMAT = "mds"  # meta.json "format" of a shard directory that points at MDS packs
_NDARRAY_DTYPES = {
    8: "uint8", 9: "int8", 16: "uint16", 17: "int16", 18: "float16", 32: "uint32", 33: "int32",
    34: "float32", 64: "uint64", 65: "int64", 66: "float64",
}  # fmt: skip
_SHAPE_DTYPES = ("uint8", "uint16", "uint32", "uint64")
_SCALARS = {
    "int": "int64", "uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
    "int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64", "float16": "float16",
    "float32": "float32", "float64": "float64",
}  # fmt: skip
_TEXT = {"str", "bytes", "json", "str_int", "str_float"}
_DECOMPRESSORS = {"zstd", "gz", "bz2"}


class MdsError(UserError):
    """MDS data that cannot be read as it is: the message names the file (and sample) and why."""


# ------------------------------------------------------------------------------ encodings
def check_encoding(encoding: str, column: str, where: str) -> None:
    """Refuse an encoding this reader does not decode (pkl above all) before any sample is read."""
    name, _, params = encoding.partition(":")
    if name == "pkl":
        raise MdsError(
            f"{where}: column {column!r} is pickled ('pkl'); prolong never unpickles (it can run arbitrary "
            "code). Re-export the column as 'ndarray:uint32' with mosaicml-streaming's MDSWriter"
        )
    if name == "ndarray":
        parts = params.split(":") if params else []
        if len(parts) > 2 or (parts and parts[0] not in _NDARRAY_DTYPES.values()):
            raise MdsError(f"{where}: column {column!r} has an unknown ndarray encoding {encoding!r}")
        return
    if name not in _SCALARS and name not in _TEXT:
        raise MdsError(
            f"{where}: column {column!r} has encoding {encoding!r}, which prolong does not read "
            f"(it reads ndarray, str, bytes, json, str_int, str_float, int and {', '.join(sorted(_SCALARS))})"
        )


def _decode(encoding: str, buf: Any, begin: int, size: int, where: str) -> Any:
    """The value of one column: a numpy view for ndarray, a Python value otherwise."""
    name, _, params = encoding.partition(":")
    if name == "ndarray":
        return _ndarray(params, buf, begin, size, where)
    data = bytes(buf[begin : begin + size])
    try:
        if name == "str":
            return data.decode("utf-8")
        if name == "bytes":
            return data
        if name == "json":
            return json.loads(data)
        if name == "str_int":
            return int(data)
        if name == "str_float":
            return float(data)
        return np.frombuffer(data, _SCALARS[name])[0].item()
    except (ValueError, IndexError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise MdsError(f"{where}: cannot decode {encoding!r} ({error}); the shard is corrupted") from None


def _ndarray(params: str, buf: Any, begin: int, size: int, where: str) -> np.ndarray:
    parts = params.split(":") if params else []
    dtype = parts[0] if parts else None
    shape = tuple(int(n) for n in parts[1].split(",")) if len(parts) > 1 else None
    at, end = begin, begin + size
    try:
        if dtype is None:
            dtype = _NDARRAY_DTYPES[buf[at]]
            at += 1
        if shape is None:
            ndim, width_code = buf[at] >> 2, buf[at] & 3
            at += 1
            shape = tuple(np.frombuffer(buf, _SHAPE_DTYPES[width_code], ndim, at).tolist())
            at += ndim << width_code
    except (KeyError, IndexError, ValueError):
        raise MdsError(f"{where}: ndarray header unreadable; the shard is corrupted") from None
    count = int(np.prod(shape, dtype=np.int64))
    if at + count * np.dtype(dtype).itemsize != end:
        raise MdsError(
            f"{where}: ndarray of shape {shape} ({dtype}) does not fill its {size} bytes; the shard is corrupted"
        )
    return np.frombuffer(buf, dtype, count, at).reshape(shape)


# ------------------------------------------------------------------------------ shards
class MdsShard:
    """One shard file of a dataset: located (decompressed if needed) and mapped on first use."""

    def __init__(self, directory: Path, entry: dict[str, Any], index_file: Path, cache_dir: Path | None) -> None:
        where = f"{index_file}"
        try:
            if entry.get("format") != "mds" or entry.get("version") != 2:
                raise MdsError(
                    f"{where}: a shard of format {entry.get('format')!r} version {entry.get('version')!r}; "
                    "prolong reads MDS version 2"
                )
            self.columns: list[str] = list(entry["column_names"])
            self.encodings: list[str] = list(entry["column_encodings"])
            self.sizes: list[int | None] = list(entry["column_sizes"])
            self.samples = int(entry["samples"])
            raw, stored = entry["raw_data"], entry.get("zip_data")
            self.raw_path = directory / raw["basename"]
            self.raw_bytes = int(raw["bytes"])
            self.raw_hashes: dict[str, str] = dict(raw.get("hashes") or {})
        except (KeyError, TypeError, ValueError) as error:
            raise MdsError(f"{where}: malformed shard entry ({error!r})") from None
        if not len(self.columns) == len(self.encodings) == len(self.sizes):
            raise MdsError(f"{where}: column_names, column_encodings and column_sizes differ in length")
        self.compression = (entry.get("compression") or "").split(":")[0] or None
        self.stored_path = directory / stored["basename"] if stored else self.raw_path
        if self.compression and self.compression not in _DECOMPRESSORS:
            raise MdsError(
                f"{self.stored_path}: {self.compression!r} compression is not read by prolong "
                f"(it reads {sorted(_DECOMPRESSORS)}); decompress the shards with mosaicml-streaming first"
            )
        self.index_file = index_file
        self.cache_dir = cache_dir
        self.file: Path | None = None  # the raw file actually mapped
        self._buf: mmap.mmap | None = None
        self._offsets: np.ndarray | None = None
        self._variable = [k for k, s in enumerate(self.sizes) if not s]

    # --------------------------------------------------------------- locating and mapping
    def _cached_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        tag = hashlib.sha256(str(self.raw_path.parent.resolve()).encode()).hexdigest()[:16]
        return self.cache_dir / tag / self.raw_path.name

    def _locate(self) -> Path:
        """The raw shard file: stored as is, decompressed before, or decompressed now."""
        candidates = [self.raw_path, self._cached_path()]
        for path in candidates:
            if path is not None and path.is_file() and path.stat().st_size == self.raw_bytes:
                return path
        if not self.compression:
            if not self.raw_path.is_file():
                raise MdsError(f"{self.raw_path}: listed in {self.index_file} but missing; download it again")
            raise MdsError(
                f"{self.raw_path}: {self.raw_path.stat().st_size} bytes, {self.index_file} says {self.raw_bytes}: "
                "truncated or corrupted; download it again"
            )
        if not self.stored_path.is_file():
            raise MdsError(f"{self.stored_path}: listed in {self.index_file} but missing; download it again")
        target = self.raw_path if os.access(self.raw_path.parent, os.W_OK) else self._cached_path()
        if target is None:
            raise MdsError(
                f"{self.stored_path}: the decompressed shard cannot be written next to it (read-only "
                "directory) and no cache directory was given"
            )
        self._decompress(target)
        return target

    def _decompress(self, target: Path) -> None:
        import zstandard

        from prolong.publish import atomic_file

        written = 0
        try:
            with open(self.stored_path, "rb") as source, atomic_file(target, "wb") as out:
                if self.compression == "zstd":
                    stream: Any = zstandard.ZstdDecompressor().stream_reader(source)
                elif self.compression == "gz":
                    stream = gzip.GzipFile(fileobj=source)
                else:
                    stream = bz2.BZ2File(source)
                while chunk := stream.read(1 << 22):
                    written += len(chunk)
                    out.write(chunk)
                if written != self.raw_bytes:
                    raise MdsError(
                        f"{self.stored_path}: decompresses to {written} bytes, {self.index_file} says "
                        f"{self.raw_bytes}: truncated or corrupted; download it again"
                    )
        except (zstandard.ZstdError, OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
            raise MdsError(
                f"{self.stored_path}: {self.compression} data is corrupted ({error}); download it again"
            ) from None

    def open(self) -> mmap.mmap:
        """Map the shard (once) and check its header against the index."""
        if self._buf is not None:
            return self._buf
        file = self._locate()
        with open(file, "rb") as handle:
            buf = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        size = len(buf)
        count = int(np.frombuffer(buf, np.uint32, 1, 0)[0]) if size >= 4 else -1
        if count != self.samples or size < 4 * (count + 2):
            raise MdsError(f"{file}: holds {count} samples, {self.index_file} says {self.samples}: corrupted")
        offsets = np.frombuffer(buf, np.uint32, count + 1, 4).astype(np.int64)
        if offsets[0] < 4 * (count + 2) or offsets[-1] != size or (np.diff(offsets) < 0).any():
            raise MdsError(f"{file}: sample offsets out of order or past the end of the file: corrupted")
        self.file, self._buf, self._offsets = file, buf, offsets
        return buf

    # --------------------------------------------------------------- samples
    def where(self, i: int) -> str:
        return f"{self.file or self.stored_path}: sample {i}"

    def spans(self, i: int) -> list[tuple[int, int]]:
        """(byte offset, size) of every column of sample i."""
        buf = self.open()
        assert self._offsets is not None
        begin, end = int(self._offsets[i]), int(self._offsets[i + 1])
        sizes = list(self.sizes)
        at = begin + 4 * len(self._variable)
        if at > end:
            raise MdsError(f"{self.where(i)}: shorter than its column sizes; the shard is corrupted")
        for k, size in zip(self._variable, np.frombuffer(buf, np.uint32, len(self._variable), begin).tolist(), strict=True):
            sizes[k] = size
        spans = []
        for size in sizes:
            spans.append((at, int(size)))  # type: ignore[arg-type]
            at += int(size)  # type: ignore[arg-type]
        if at != end:
            raise MdsError(f"{self.where(i)}: its columns hold {at - begin} bytes, the sample {end - begin}: corrupted")
        return spans

    def value(self, i: int, column: str) -> Any:
        """Column `column` of sample i (an ndarray view, or a Python value)."""
        k = self.columns.index(column)
        begin, size = self.spans(i)[k]
        return _decode(self.encodings[k], self._buf, begin, size, f"{self.where(i)}, column {column!r}")

    def verify_hashes(self) -> None:
        """Compare the mapped file with the index's hashes that hashlib computes (others are skipped)."""
        buf = self.open()
        for algorithm, expected in self.raw_hashes.items():
            if algorithm not in hashlib.algorithms_available:
                continue
            if hashlib.new(algorithm, buf).hexdigest() != expected:
                raise MdsError(
                    f"{self.file}: {algorithm} differs from {self.index_file}: corrupted; download it again"
                )


# ------------------------------------------------------------------------------ datasets
def find_index_files(path: Path) -> list[Path]:
    """index.json of `path`, or else of every dataset below it, in sorted order."""
    if (path / INDEX).is_file():
        return [path / INDEX]
    children = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [index for child in children for index in find_index_files(child)]


def is_mds_dir(path: Path) -> bool:
    """True when `path` is, or holds below it, an MDS dataset."""
    return path.is_dir() and bool(find_index_files(path))


class MdsDataset:
    """The samples of one or more MDS dataset directories, in order."""

    def __init__(self, paths: Sequence[str | Path], cache_dir: str | Path | None = None) -> None:
        self.paths = [Path(p).parent if Path(p).name == INDEX else Path(p) for p in paths]
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.index_files: list[Path] = []
        self.shards: list[MdsShard] = []
        for path in self.paths:
            if not path.is_dir():
                raise MdsError(f"{path}: not a directory (an MDS dataset is a directory with index.json)")
            found = find_index_files(path)
            if not found:
                raise MdsError(f"{path}: no index.json in it or below it; not an MDS dataset")
            for index_file in found:
                self.index_files.append(index_file)
                self.shards += [MdsShard(index_file.parent, e, index_file, self.cache_dir) for e in _entries(index_file)]
        self.starts = np.cumsum([0] + [s.samples for s in self.shards], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def columns(self) -> dict[str, str]:
        """Columns every shard has, with their encoding (the first shard's)."""
        if not self.shards:
            return {}
        common = set.intersection(*(set(s.columns) for s in self.shards))
        first = self.shards[0]
        return {c: first.encodings[first.columns.index(c)] for c in first.columns if c in common}

    def require(self, *columns: str) -> None:
        """Refuse the dataset unless every shard has `columns` in an encoding this reader decodes."""
        for shard in self.shards:
            for column in columns:
                if column not in shard.columns:
                    raise MdsError(
                        f"{shard.index_file}: shard {shard.raw_path.name} has no column {column!r}; "
                        f"its columns: {shard.columns}"
                    )
                check_encoding(shard.encodings[shard.columns.index(column)], column, str(shard.index_file))

    def locate(self, i: int) -> tuple[MdsShard, int]:
        """(shard, sample within it) of sample i."""
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} of an MDS dataset with {len(self)}")
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.shards[k], i - int(self.starts[k])

    def value(self, i: int, column: str) -> Any:
        shard, local = self.locate(i)
        return shard.value(local, column)

    def where(self, i: int) -> str:
        shard, local = self.locate(i)
        return shard.where(local)

    def fingerprint(self) -> list[tuple[str, int, int]]:
        """(path, size, mtime) of every index and stored shard file: changed data invalidates a build."""
        files = self.index_files + [s.stored_path for s in self.shards]
        return [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()]


def _entries(index_file: Path) -> list[dict[str, Any]]:
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MdsError(f"{index_file}: not a readable index ({error})") from None
    if not isinstance(index, dict) or index.get("version") != 2 or not isinstance(index.get("shards"), list):
        raise MdsError(f"{index_file}: not an MDS version 2 index (expected {{'version': 2, 'shards': [...]}})")
    return index["shards"]


def checked_ids(values: Any, where: str) -> np.ndarray:
    """A 1-D integer column that can be token ids (non-negative, 32 bits), as it is (no copy)."""
    if not isinstance(values, np.ndarray) or values.ndim != 1 or values.dtype.kind not in "iu":
        raise MdsError(f"{where}: input_ids must be a 1-D integer array, got {getattr(values, 'dtype', type(values))}")
    if values.dtype.kind == "i" and len(values) and int(values.min()) < 0:
        raise MdsError(f"{where}: negative token id {int(values.min())}")
    if values.dtype.itemsize > 4 and len(values) and int(values.max()) > np.iinfo(TOKEN_DTYPE).max:
        raise MdsError(f"{where}: token id {int(values.max())} does not fit 32 bits")
    return values


def token_ids(values: Any, where: str) -> np.ndarray:
    """A 1-D integer column as uint32 token ids (a copy: what a training sequence holds)."""
    return np.array(checked_ids(values, where), dtype=TOKEN_DTYPE)


def check_vocab(max_id: int, vocab_size: int, where: str) -> None:
    """Refuse token ids outside the model's vocabulary (MDS data carries no tokenizer to compare)."""
    if max_id >= vocab_size:
        raise MdsError(
            f"{where}: token id {max_id} does not fit the vocabulary of {vocab_size} tokens; the data was "
            "tokenized with another tokenizer than the recipe's tokenizer.path (ProLong's released data: "
            "Llama-3's, 128,256 tokens)"
        )


# ------------------------------------------------------------------------------ packed sequences
def document_spans(indices: Any, length: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the non-empty documents of a pack, checked ordered and within its length."""
    pairs = np.asarray(indices, dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise MdsError(f"{where}: indices must be (start, end) pairs, got shape {pairs.shape}")
    pairs = pairs[pairs[:, 1] > pairs[:, 0]]
    starts, ends = pairs[:, 0], pairs[:, 1]
    if len(pairs) and (starts[0] < 0 or ends[-1] > length or (starts[1:] < ends[:-1]).any()):
        raise MdsError(
            f"{where}: indices are not ordered, non-overlapping (start, end) pairs within the {length} tokens"
        )
    return starts, ends


def pack_layout(indices: Any, length: int, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Document lengths tiling [0, length) from (start, end) pairs, and a mask False on uncovered tokens.

    ProLong's collator trains on each (start, end) slice as one document and drops tokens outside
    every slice; here each such gap becomes a document of its own that is never a target, so the real
    documents are attended and predicted exactly as there. Empty slices are dropped.
    """
    starts, ends = document_spans(indices, length, where)
    gaps = starts - np.concatenate([[0], ends[:-1]])
    tail = length - (int(ends[-1]) if len(ends) else 0)
    if not gaps.any() and tail == 0:
        return (ends - starts).astype(np.int32), None
    lens = np.append(np.stack([gaps, ends - starts], axis=1).reshape(-1), tail)
    is_doc = np.append(np.tile([False, True], len(ends)), False)
    lens, is_doc = lens[lens > 0], is_doc[lens > 0]
    return lens.astype(np.int32), np.repeat(is_doc, lens)


class MdsPacks:
    """Packed sequences of MDS datasets, trained on as they are (ShardReader's reading interface).

    Every sample must hold exactly `seq_len` tokens (input_ids) and its document boundaries
    (indices); with `use_mask` (SFT domains), its `mask` column is the loss mask (1: assistant token).
    A pretraining domain ignores a mask column, as ProLong's pretraining did (apply_instruct_masks off).
    """

    def __init__(self, dataset: MdsDataset, seq_len: int, use_mask: bool, meta: dict[str, Any] | None = None) -> None:
        self.dataset = dataset
        self.seq_len = seq_len
        self.use_mask = use_mask
        dataset.require("input_ids", "indices", *(["mask"] if use_mask else []))
        self.meta: dict[str, Any] = meta if meta is not None else {"num_tokens": len(dataset) * seq_len}
        self.vocab_size: int | None = None  # set by the mixture: every sample read is checked against it

    @classmethod
    def open_link(cls, path: str | Path) -> MdsPacks:
        """The packs a shard directory written by `prolong data build` points at (checked unchanged)."""
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        dataset = MdsDataset(meta["mds_paths"], meta.get("mds_cache_dir"))
        if [list(f) for f in dataset.fingerprint()] != meta["mds_fingerprint"] or len(dataset) != meta["num_sequences"]:
            raise MdsError(
                f"{path}: the MDS data it points at ({', '.join(meta['mds_paths'])}) changed since "
                f"`prolong data build` checked it; run the build again"
            )
        return cls(dataset, meta["seq_len"], meta["has_loss_mask"], {**meta, "path": str(path)})

    def __len__(self) -> int:
        return len(self.dataset)

    def seq_len_of(self, i: int) -> int:
        """Tokens in sequence i: every pack holds seq_len (checked when read)."""
        return self.seq_len

    def doc_lens_of(self, i: int) -> np.ndarray:
        """Document lengths of sequence i (from its indices, without reading its tokens)."""
        return pack_layout(self.dataset.value(i, "indices"), self.seq_len, self.dataset.where(i))[0]

    def __getitem__(self, i: int) -> PackedSequence:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sequence {i} of {len(self)} MDS packs")
        i %= len(self)
        where = self.dataset.where(i)
        ids = self.dataset.value(i, "input_ids")
        if getattr(ids, "ndim", None) == 1 and len(ids) != self.seq_len:
            raise MdsError(_wrong_length(where, len(ids), self.seq_len))
        ids = token_ids(ids, where)
        if self.vocab_size is not None and len(ids):
            check_vocab(int(ids.max()), self.vocab_size, where)
        doc_lens, covered = pack_layout(self.dataset.value(i, "indices"), len(ids), where)
        mask = covered
        if self.use_mask:
            values = self.dataset.value(i, "mask")
            if values.shape != ids.shape:
                raise MdsError(f"{where}: mask has shape {values.shape}, input_ids {ids.shape}")
            mask = values.astype(bool) if covered is None else values.astype(bool) & covered
        return PackedSequence(input_ids=ids, doc_lens=doc_lens, loss_mask=mask)


def _wrong_length(where: str, length: int, seq_len: int) -> str:
    return (
        f"{where}: a pack of {length} tokens, the stage's seq_len is {seq_len}; packs are used as they "
        "are: point the domain at the data packed to this length, or set the stage's seq_len to the pack length"
    )


# ------------------------------------------------------------------------------ full scans
@dataclass
class MdsSummary:
    """What a full pass over a dataset found."""

    samples: int = 0
    tokens: int = 0
    documents: int = 0
    max_token_id: int = -1
    max_token_where: str = ""  # the file and sample holding the largest id
    min_length: int = 0
    max_length: int = 0
    packed: bool = False
    doc_lens: list[np.ndarray] = field(default_factory=list)

    def lengths(self) -> np.ndarray:
        """Every document (piece) length seen, when the scan kept them."""
        return np.concatenate(self.doc_lens) if self.doc_lens else np.zeros(0, dtype=np.int64)


def scan(
    dataset: MdsDataset,
    seq_len: int | None = None,
    use_mask: bool = False,
    vocab_size: int | None = None,
    keep_doc_lens: bool = False,
    description: str = "checking MDS data",
    show_progress: bool = False,
) -> MdsSummary:
    """Read every sample once: hashes, headers, pack lengths (== seq_len when given), indices, masks,
    token ids (< vocab_size when given). Packed when the dataset has an `indices` column."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    packed = "indices" in dataset.columns()
    dataset.require("input_ids", *(["indices"] if packed else []), *(["mask"] if use_mask else []))
    summary = MdsSummary(packed=packed, min_length=np.iinfo(np.int64).max)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        task = progress.add_task(description, total=len(dataset))
        for shard in dataset.shards:
            shard.verify_hashes()
            for local in range(shard.samples):
                where = shard.where(local)
                ids = checked_ids(shard.value(local, "input_ids"), where)
                if packed:
                    if seq_len is not None and len(ids) != seq_len:
                        raise MdsError(_wrong_length(where, len(ids), seq_len))
                    starts, ends = document_spans(shard.value(local, "indices"), len(ids), where)
                    lens = ends - starts
                    if use_mask and shard.value(local, "mask").shape != ids.shape:
                        raise MdsError(f"{where}: mask and input_ids differ in length")
                else:
                    lens = np.asarray([len(ids)])
                if len(ids) and int(ids.max()) > summary.max_token_id:
                    summary.max_token_id, summary.max_token_where = int(ids.max()), where
                summary.samples += 1
                summary.tokens += len(ids)
                summary.documents += len(lens)
                summary.min_length = min(summary.min_length, len(ids))
                summary.max_length = max(summary.max_length, len(ids))
                if keep_doc_lens:
                    summary.doc_lens.append(lens.astype(np.int64))
            progress.advance(task, shard.samples)
    if summary.samples == 0:
        summary.min_length = 0
    if vocab_size is not None and summary.max_token_id >= 0:
        check_vocab(summary.max_token_id, vocab_size, summary.max_token_where)
    return summary


# ------------------------------------------------------------------------------ links for the mixture
def write_pack_link(target: Path, dataset: MdsDataset, summary: MdsSummary, meta: dict[str, Any]) -> dict[str, Any]:
    """A shard directory (meta.json only, written atomically) that points the mixture at MDS packs."""
    from prolong.publish import staged_dir

    full = {
        "format_version": FORMAT_VERSION,
        "format": LINK_FORMAT,
        **meta,
        "mds_paths": [str(p.resolve()) for p in dataset.paths],
        "mds_cache_dir": str(dataset.cache_dir.resolve()) if dataset.cache_dir else None,
        "mds_fingerprint": [list(f) for f in dataset.fingerprint()],
        "num_sequences": summary.samples,
        "num_tokens": summary.tokens,
        "num_documents": summary.documents,
        "max_token_id": summary.max_token_id,
    }
    with staged_dir(target) as staged:
        (staged.path / "meta.json").write_text(json.dumps(full, indent=2, sort_keys=True), encoding="utf-8")
    return full


# ------------------------------------------------------------------------------ documents to re-pack
class MdsDocuments:
    """Unpacked MDS documents (already token ids) with TokenizedDocs' reading interface, for packing.

    Each sample's input_ids is one document, framed as the tokenizer frames text documents: BOS first
    when the tokenizer adds one and the document does not start with it, EOS last likewise (ProLong's
    raw data has neither; its packer added them the same way). An sft domain's documents are
    conversations with a `mask` column (the loss mask) and are not framed. Nothing is copied: tokens
    are read from the mapped shards when a sequence is written.
    """

    def __init__(
        self,
        dataset: MdsDataset,
        meta: dict[str, Any],
        bos: int | None,
        eos: int | None,
        sft: bool,
        max_documents: int | None = None,
        vocab_size: int | None = None,
    ) -> None:
        if "indices" in dataset.columns():
            raise MdsError(f"{dataset.paths[0]}: holds packed sequences (an indices column), not documents")
        dataset.require("input_ids", *(["mask"] if sft else []))
        self.dataset, self.sft, self.vocab_size = dataset, sft, vocab_size
        count = len(dataset) if max_documents is None else min(len(dataset), max_documents)
        raw = np.empty(count, dtype=np.int64)
        self._head = np.zeros(count, dtype=np.int64)  # 1 where BOS is added
        self._tail = np.zeros(count, dtype=np.int64)  # 1 where EOS is added
        for i in range(count):
            ids = dataset.value(i, "input_ids")
            if getattr(ids, "ndim", None) != 1:
                raise MdsError(f"{dataset.where(i)}: input_ids must be a 1-D array")
            raw[i] = len(ids)
            if not sft and len(ids):
                self._head[i] = bos is not None and int(ids[0]) != bos
                self._tail[i] = eos is not None and int(ids[-1]) != eos
        self.bos, self.eos = bos, eos
        self.lengths = raw + self._head + self._tail
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.meta = {
            **meta,
            "kind": "sft" if sft else "text",
            "num_tokens": int(self.lengths.sum()),
            "num_documents": count,
            "counts": {"documents": count, "empty": int((raw == 0).sum()), "non_utf8": 0},
            "bos_id": bos,
            "eos_id": eos,
        }

    def __len__(self) -> int:
        return len(self.lengths)

    def tokens(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Tokens [start:stop] of framed document i."""
        where = self.dataset.where(i)
        ids = token_ids(self.dataset.value(i, "input_ids"), where)
        if self.vocab_size is not None and len(ids):
            check_vocab(int(ids.max()), self.vocab_size, where)
        head = [self.bos] if self._head[i] else []
        tail = [self.eos] if self._tail[i] else []
        framed = np.concatenate([np.asarray(head, TOKEN_DTYPE), ids, np.asarray(tail, TOKEN_DTYPE)])
        return framed[start:stop]

    def loss_mask(self, i: int) -> np.ndarray:
        """The `mask` column of conversation i (sft domains)."""
        if not self.sft:
            raise ValueError(f"{self.dataset.paths[0]}: documents of a pretraining domain have no loss mask")
        values = self.dataset.value(i, "mask")
        if values.shape != (int(self.lengths[i]),):
            raise MdsError(f"{self.dataset.where(i)}: mask and input_ids differ in length")
        return values.astype(bool)

    def close(self) -> None:
        """Nothing to release: the mappings close with the dataset."""


def iter_datasets(root: Path) -> Iterator[Path]:
    """The MDS datasets `prolong data stats` reports under `root`, one per domain: root itself when it
    has an index.json or when every sub-folder holding data is a dataset of its own index.json (parts,
    as procNN-64/), else each sub-directory that holds data, looked at the same way."""
    children = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".") and is_mds_dir(p)]
    if (root / INDEX).is_file() or (children and all((c / INDEX).is_file() for c in children)):
        yield root
        return
    for child in children:
        yield from iter_datasets(child)
