"""Tokenize a document stream in parallel into a flat token file (the input of packing).

Output directory (written atomically like a shard):
    tokens.bin       uint32, every document back to back (BOS/EOS added as the tokenizer does)
    doc_offsets.npy  int64 [num_documents + 1]
    loss_mask.bin    uint8, sft only: assistant tokens
    meta.json        tokenizer identity, counts of documents seen, empty, non-UTF-8

Workers receive batches of documents and return them in submission order, so the output is the same
byte for byte whatever the number of workers. With one worker the `tokenizers` library parallelises
each batch over the cores itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prolong.data.format import TOKEN_DTYPE
from prolong.data.sources import document_text
from prolong.publish import staged_dir

BATCH_CHARS = 1 << 20  # text per task: large enough to amortise IPC, small enough to keep memory flat
BATCH_DOCS = 2048
PARALLEL_MIN_BYTES = 16 << 20


# ------------------------------------------------------------------------------ tokenizer identity
def tokenizer_identity(tokenizer: Any) -> dict[str, str]:
    """{name, vocab_hash}: the hash covers every token string and id, special tokens included."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]
    return {
        "name": Path(str(tokenizer.name_or_path)).name or str(tokenizer.name_or_path),
        "vocab_hash": digest,
    }


@dataclass(frozen=True)
class SpecialIds:
    """How documents are framed: BOS first when the tokenizer adds it, EOS last when it has one."""

    bos: int | None
    eos: int | None

    @classmethod
    def of(cls, tokenizer: Any) -> SpecialIds:
        """Read from the tokenizer: BOS only if encoding plain text adds it (Llama yes, Qwen no)."""
        bos = tokenizer.bos_token_id
        probe = tokenizer("a")["input_ids"]
        adds_bos = bos is not None and len(probe) > 0 and probe[0] == bos
        return cls(bos=bos if adds_bos else None, eos=tokenizer.eos_token_id)


# ------------------------------------------------------------------------------ worker side
_worker: dict[str, Any] = {}


def _init_worker(tokenizer_path: str, chat: bool, special: SpecialIds, threads: bool) -> None:
    if not threads:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    file = Path(tokenizer_path) / "tokenizer.json"
    if chat or not file.exists():
        from prolong.model.io import load_tokenizer  # here, not at the top: plain-text workers skip torch

        _worker["hf"] = load_tokenizer(tokenizer_path)
        _worker["fast"] = _worker["hf"].backend_tokenizer
    else:  # plain text needs only the Rust tokenizer: much faster to start than transformers
        from tokenizers import Tokenizer

        _worker["fast"] = Tokenizer.from_file(str(file))
    _worker["chat"] = chat
    _worker["special"] = special


def _encode_batch(documents: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(tokens of all documents, their lengths, loss mask or None) for one batch."""
    special: SpecialIds = _worker["special"]
    if _worker["chat"]:
        from prolong.data.chat import render_completion, render_conversation

        hf = _worker["hf"]
        rendered = [
            render_completion(hf, document[0], document[1], special.bos, special.eos) if isinstance(document, tuple)
            else render_conversation(hf, document)
            for document in documents
        ]
        lengths = np.asarray([len(ids) for ids, _ in rendered], dtype=np.int64)
        tokens = np.concatenate([ids for ids, _ in rendered]) if rendered else np.zeros(0, TOKEN_DTYPE)
        mask = np.concatenate([m for _, m in rendered]) if rendered else np.zeros(0, bool)
        return tokens.astype(TOKEN_DTYPE), lengths, mask
    encodings = _worker["fast"].encode_batch_fast(documents, add_special_tokens=False)
    head = [special.bos] if special.bos is not None else []
    tail = [special.eos] if special.eos is not None else []
    flat: list[int] = []  # one list, converted once: far cheaper than an array per document
    lengths = np.empty(len(encodings), dtype=np.int64)
    for i, encoding in enumerate(encodings):
        ids = encoding.ids
        flat += head
        flat += ids
        flat += tail
        lengths[i] = len(head) + len(ids) + len(tail)
    return np.array(flat, dtype=TOKEN_DTYPE), lengths, None


# ------------------------------------------------------------------------------ main side
def _batches(documents: Iterator[Any]) -> Iterator[list[Any]]:
    batch: list[Any] = []
    chars = 0
    for document in documents:
        batch.append(document)
        chars += len(document_text(document))
        if chars >= BATCH_CHARS or len(batch) >= BATCH_DOCS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _ordered_results(
    batches: Iterator[list[Any]], workers: int, init_args: tuple[Any, ...]
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Encode batches on `workers` processes, yielding results in submission order.

    At most 2 x workers batches are in flight, so memory does not grow with the corpus
    (Pool.imap would read the whole input ahead).
    """
    if workers <= 1:
        _init_worker(*init_args)
        for batch in batches:
            yield _encode_batch(batch)
        return
    # spawn, not fork: the parent may hold torch or tokenizers thread pools that fork would break
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
        pending: deque[Any] = deque()
        for batch in batches:
            pending.append(pool.apply_async(_encode_batch, (batch,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def tokenize_documents(
    stream: Any,
    tokenizer_path: str | Path,
    out_dir: str | Path,
    workers: int | None = None,
    description: str = "tokenizing",
    show_progress: bool = True,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Tokenize `stream` (a DocumentStream) into `out_dir`; returns the written meta.

    `workers`: processes (default: one per core, or one for sources under 16 MB).
    `tokenizer` is the already-loaded tokenizer of `tokenizer_path`, if the caller has one.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    if tokenizer is None:
        from prolong.model.io import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_path)
    chat = bool(getattr(stream, "chat", False))
    special = SpecialIds.of(tokenizer)
    if workers is None:
        # Worker processes take seconds to start (transformers for chat templates); below this size
        # one process is faster (plain text still uses every core through the tokenizers library).
        small = stream.progress.total < PARALLEL_MIN_BYTES
        workers = 1 if small else default_workers()
    out = Path(out_dir)
    staged = staged_dir(out)  # left to the next writer if this one dies (prolong.publish)
    tmp = staged.path
    offsets = [np.zeros(1, dtype=np.int64)]
    total = 0
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[tokens]:,} tokens"),
        TextColumn("{task.fields[rate]:,.0f} tok/s"),
        TimeRemainingColumn(),
    )
    with (
        open(tmp / "tokens.bin", "wb") as tokens_file,
        open(tmp / "loss_mask.bin", "wb") if chat else open(os.devnull, "wb") as mask_file,
        Progress(*columns, disable=not show_progress, transient=False) as progress,
    ):
        task = progress.add_task(description, total=max(stream.progress.total, 1), tokens=0, rate=0.0)
        init_args = (str(tokenizer_path), chat, special, workers <= 1)
        for tokens, lengths, mask in _ordered_results(_batches(iter(stream)), workers, init_args):
            tokens_file.write(tokens.tobytes())
            if mask is not None:
                mask_file.write(mask.astype(np.uint8).tobytes())
            offsets.append(total + np.cumsum(lengths))
            total += int(lengths.sum())
            elapsed = progress.tasks[0].elapsed or 1e-9
            progress.update(task, completed=stream.progress.done, tokens=total, rate=total / elapsed)
        progress.update(task, completed=max(stream.progress.total, 1))
    np.save(tmp / "doc_offsets.npy", np.concatenate(offsets))
    meta = {
        "tokenizer": tokenizer_identity(tokenizer),
        "kind": "sft" if chat else "text",
        "num_tokens": total,
        "num_documents": len(np.concatenate(offsets)) - 1,
        "counts": stream.counts.as_dict(),
        "bos_id": special.bos,
        "eos_id": special.eos,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    staged.publish()
    return meta


class TokenizedDocs:
    """Read access to a tokenized corpus by document, with positioned reads (flat memory)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.meta: dict[str, Any] = json.loads((self.path / "meta.json").read_text(encoding="utf-8"))
        self.offsets = np.load(self.path / "doc_offsets.npy")
        self.lengths = np.diff(self.offsets)
        self._tokens: int | None = os.open(self.path / "tokens.bin", os.O_RDONLY)
        mask = self.path / "loss_mask.bin"
        self._mask: int | None = os.open(mask, os.O_RDONLY) if mask.exists() else None

    def __len__(self) -> int:
        return len(self.lengths)

    def tokens(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Tokens [start:stop] of document i."""
        lo = int(self.offsets[i]) + start
        hi = int(self.offsets[i + 1]) if stop is None else int(self.offsets[i]) + stop
        if self._tokens is None:
            raise ValueError(f"{self.path}: read after close()")
        data = os.pread(self._tokens, (hi - lo) * 4, lo * 4)
        return np.frombuffer(data, dtype=TOKEN_DTYPE)

    def loss_mask(self, i: int) -> np.ndarray:
        """Assistant mask of conversation i (sft corpora)."""
        if self._mask is None:
            raise ValueError(f"{self.path}: not a chat corpus, it has no loss mask")
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return np.frombuffer(os.pread(self._mask, hi - lo, lo), dtype=np.uint8).astype(bool)

    def close(self) -> None:
        """Release the file handles."""
        # forget the descriptors: closing twice could close a file opened since under the same number
        for fd in (self._tokens, self._mask):
            if fd is not None:
                os.close(fd)
        self._tokens = self._mask = None

    def __del__(self) -> None:
        with contextlib.suppress(OSError, AttributeError, TypeError):  # at interpreter exit
            self.close()
