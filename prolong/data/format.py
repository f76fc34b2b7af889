"""The packed shard format: what `prolong data build` writes and the trainer reads.

A shard is one directory holding ready-to-train sequences of one domain and one length subset:

    tokens.bin        all sequences back to back, uint32 (memory-mapped when read)
    seq_offsets.npy   int64 [num_sequences + 1]: sequence i is tokens[seq_offsets[i]:seq_offsets[i+1]]
    doc_offsets.npy   int64 [num_sequences + 1]: its documents are doc_lens[doc_offsets[i]:doc_offsets[i+1]]
    doc_lens.npy      int32: document lengths, summing to the sequence length (CSR with doc_offsets)
    loss_mask.bin     uint8, only for SFT: 1 where the token is trained on (assistant tokens)
    meta.json         format version, tokenizer identity, lengths, counts

It is written into a temporary sibling directory and renamed into place at the end (`prolong.publish`),
so a build that is interrupted never leaves a directory that looks complete (`is_complete` checks for
meta.json).
"""

from __future__ import annotations

import json
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prolong.publish import staged_dir

FORMAT_VERSION = 1
TOKEN_DTYPE = np.uint32


@dataclass
class PackedSequence:
    """One training sequence: tokens, the lengths of the documents in it, and an optional loss mask."""

    input_ids: np.ndarray  # [L] uint32
    doc_lens: np.ndarray  # [num_docs] int32, sums to L
    loss_mask: np.ndarray | None = None  # [L] bool; None: every token is trained on

    def __post_init__(self) -> None:
        if int(self.doc_lens.sum()) != len(self.input_ids):
            raise ValueError(
                f"doc_lens sum to {int(self.doc_lens.sum())}, sequence has {len(self.input_ids)}"
            )

    @property
    def doc_starts(self) -> np.ndarray:
        """Offset of each document's first token in the sequence."""
        return np.concatenate([[0], np.cumsum(self.doc_lens[:-1])]).astype(np.int64)

    @property
    def attention_cost(self) -> int:
        """Sum of squared document lengths (what document-masked attention costs)."""
        return int(np.square(self.doc_lens.astype(np.int64)).sum())


def is_complete(path: str | Path) -> bool:
    """True when the shard directory was fully written (meta.json is renamed in last)."""
    return (Path(path) / "meta.json").is_file()


def shard_meta(path: str | Path) -> dict[str, Any]:
    """meta.json of a finished shard directory, of either kind (see `open_shard`)."""
    return json.loads((Path(path) / "meta.json").read_text(encoding="utf-8"))


def open_shard(path: str | Path) -> Any:
    """The reader of a finished shard directory: a ShardReader, or an MdsPacks when the directory is a
    link to MDS packs (meta.json "format": "mds", written by `prolong data build` for an mds domain)."""
    if is_complete(path) and shard_meta(path).get("format") == "mds":
        from prolong.data.mds import MdsPacks

        return MdsPacks.open_link(path)
    return ShardReader(path)


class ShardWriter:
    """Append packed sequences to a new shard; `close(meta)` makes it visible atomically."""

    def __init__(self, path: str | Path, with_loss_mask: bool = False) -> None:
        self.path = Path(path)
        self._staged = staged_dir(self.path)
        self.tmp = self._staged.path
        # held open across add() calls; close() or abort() closes them
        self._tokens = open(self.tmp / "tokens.bin", "wb")  # noqa: SIM115
        self._mask = open(self.tmp / "loss_mask.bin", "wb") if with_loss_mask else None  # noqa: SIM115
        # flat typed arrays: per-sequence numpy objects would cost ~100 bytes each on large shards
        self._seq_offsets = array("q", [0])
        self._doc_offsets = array("q", [0])
        self._doc_lens = array("i")
        self.num_tokens = 0
        self.num_documents = 0

    def add(self, input_ids: np.ndarray, doc_lens: np.ndarray, loss_mask: np.ndarray | None = None) -> None:
        """Append one sequence."""
        doc_lens = np.asarray(doc_lens, dtype=np.int32)
        if int(doc_lens.sum()) != len(input_ids):
            raise ValueError("doc_lens must sum to the sequence length")
        self._tokens.write(np.ascontiguousarray(input_ids, dtype=TOKEN_DTYPE).tobytes())
        if self._mask is not None:
            if loss_mask is None or len(loss_mask) != len(input_ids):
                raise ValueError("an SFT shard needs a loss mask as long as every sequence")
            self._mask.write(np.asarray(loss_mask, dtype=np.uint8).tobytes())
        self.num_tokens += len(input_ids)
        self.num_documents += len(doc_lens)
        self._seq_offsets.append(self.num_tokens)
        self._doc_offsets.append(self.num_documents)
        self._doc_lens.extend(doc_lens.tolist())

    def __len__(self) -> int:
        return len(self._seq_offsets) - 1

    def close(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Finish the shard: write the index and meta.json, then rename it into place."""
        self._tokens.close()
        if self._mask is not None:
            self._mask.close()
        np.save(self.tmp / "seq_offsets.npy", np.asarray(self._seq_offsets, dtype=np.int64))
        np.save(self.tmp / "doc_offsets.npy", np.asarray(self._doc_offsets, dtype=np.int64))
        np.save(self.tmp / "doc_lens.npy", np.asarray(self._doc_lens, dtype=np.int32))
        full = {
            "format_version": FORMAT_VERSION,
            **meta,
            "num_sequences": len(self),
            "num_tokens": self.num_tokens,
            "num_documents": self.num_documents,
            "has_loss_mask": self._mask is not None,
        }
        (self.tmp / "meta.json").write_text(json.dumps(full, indent=2, sort_keys=True), encoding="utf-8")
        self._staged.publish()  # replaces an older shard at the target
        return full

    def abort(self) -> None:
        """Drop the partial shard."""
        self._tokens.close()
        if self._mask is not None:
            self._mask.close()
        self._staged.discard()


class ShardReader:
    """O(1) random access to the packed sequences of one shard."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not is_complete(self.path):
            raise FileNotFoundError(
                f"{self.path}: not a finished shard (no meta.json); run `prolong data build`"
            )
        self.meta: dict[str, Any] = json.loads((self.path / "meta.json").read_text(encoding="utf-8"))
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{self.path}: shard format version {self.meta.get('format_version')}, this prolong reads "
                f"version {FORMAT_VERSION}; rebuild the shards"
            )
        if self.meta.get("format") == "mds":
            raise ValueError(f"{self.path}: a link to MDS packs, not a packed shard; open it with open_shard")
        self.seq_offsets = np.load(self.path / "seq_offsets.npy")
        self.doc_offsets = np.load(self.path / "doc_offsets.npy")
        self.doc_lens = np.load(self.path / "doc_lens.npy")
        self.tokens = self._map("tokens.bin", TOKEN_DTYPE)
        self.loss_mask = self._map("loss_mask.bin", np.uint8) if self.meta.get("has_loss_mask") else None

    def _map(self, name: str, dtype: type) -> np.ndarray:
        file = self.path / name
        if file.stat().st_size == 0:  # np.memmap refuses empty files
            return np.zeros(0, dtype=dtype)
        return np.memmap(file, dtype=dtype, mode="r")

    def __len__(self) -> int:
        return len(self.seq_offsets) - 1

    def seq_len_of(self, i: int) -> int:
        """Tokens in sequence i (without reading them)."""
        return int(self.seq_offsets[i + 1] - self.seq_offsets[i])

    def doc_lens_of(self, i: int) -> np.ndarray:
        """Document lengths of sequence i (without reading its tokens)."""
        return self.doc_lens[self.doc_offsets[i] : self.doc_offsets[i + 1]]

    def __getitem__(self, i: int) -> PackedSequence:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sequence {i} of a shard with {len(self)}")
        i %= len(self)
        start, end = int(self.seq_offsets[i]), int(self.seq_offsets[i + 1])
        mask = None if self.loss_mask is None else np.asarray(self.loss_mask[start:end], dtype=bool)
        return PackedSequence(
            input_ids=np.array(self.tokens[start:end]),
            doc_lens=np.array(self.doc_lens_of(i), dtype=np.int32),
            loss_mask=mask,
        )
