"""Long documents of a recipe's domains, cut to `max_doc_tokens` and split into token chunks.

Cuts follow token boundaries of the recipe's tokenizer (the one the SFT data is packed with), found
through the tokenizer's character offsets, so chunks are exact slices of the original text.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prolong.config import Recipe, SynthSpec
from prolong.data.sources import DocumentStream
from prolong.errors import UserError

# Characters read per wanted token before tokenizing: English averages ~4; the whole text is used
# when this prefix turns out too short, so this only bounds work on very long books.
_CHARS_PER_TOKEN = 12


@dataclass(frozen=True)
class LongDocument:
    """A document cut to at most max_doc_tokens; `bounds` are the character offsets of its chunks."""

    text: str
    num_tokens: int
    bounds: tuple[int, ...]  # len = num_chunks + 1; chunk i is text[bounds[i]:bounds[i + 1]]

    @property
    def num_chunks(self) -> int:
        """How many chunks the document has."""
        return len(self.bounds) - 1

    def chunk(self, i: int) -> str:
        """Chunk i, an exact slice of the text."""
        return self.text[self.bounds[i] : self.bounds[i + 1]]

    @property
    def chunks(self) -> list[str]:
        """All chunks in order; they concatenate to the text."""
        return [self.chunk(i) for i in range(self.num_chunks)]


def cut_document(text: str, tokenizer: Any, max_tokens: int, chunk_tokens: int) -> LongDocument:
    """Cut `text` to `max_tokens` tokens and split it into chunks of `chunk_tokens` tokens.

    A last chunk shorter than half a chunk is merged into the one before it (a tiny tail makes a poor
    QA snippet or passage).
    """
    prefix = text[: max_tokens * _CHARS_PER_TOKEN]
    offsets = tokenizer(prefix, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) < max_tokens and len(prefix) < len(text):
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    n = min(len(offsets), max_tokens)
    if n == 0:
        return LongDocument(text="", num_tokens=0, bounds=(0,))
    end = offsets[n - 1][1]
    starts = [0] + [offsets[k][0] for k in range(chunk_tokens, n, chunk_tokens)]
    if len(starts) > 1 and n - (len(starts) - 1) * chunk_tokens < chunk_tokens / 2:
        starts.pop()
    return LongDocument(text=text[:end], num_tokens=n, bounds=(*starts, end))


def _interleave(streams: list[Iterator[Any]]) -> Iterator[Any]:
    """One item from each stream in turn, so every source domain is represented in the pool."""
    live = list(streams)
    while live:
        for stream in list(live):
            try:
                yield next(stream)
            except StopIteration:
                live.remove(stream)


def load_documents(recipe: Recipe, spec: SynthSpec, tokenizer: Any) -> list[LongDocument]:
    """The pool examples draw from: the first `max_source_documents` documents of at least
    `min_doc_tokens` tokens, taken in turn from each source domain, cut and chunked."""
    streams = []
    for name in spec.source_domains:
        domain = recipe.domain(name)
        if domain.kind == "sft":
            raise UserError(
                f"synth.source_domains: {name!r} is an sft domain; name domains of plain documents"
            )
        streams.append(iter(DocumentStream(domain.sources, domain.kind, recipe.seed)))
    pool = []
    for text in _interleave(streams):
        document = cut_document(text, tokenizer, spec.max_doc_tokens, spec.chunk_tokens)
        if document.num_tokens >= spec.min_doc_tokens:
            pool.append(document)
            if len(pool) == spec.max_source_documents:
                break
    if not pool:
        raise UserError(
            f"synth: no document of {spec.source_domains} has min_doc_tokens={spec.min_doc_tokens} tokens; "
            "add longer documents or lower synth.min_doc_tokens"
        )
    return pool
