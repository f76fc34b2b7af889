"""`prolong data ...` and `prolong tokenizer train`: typed functions, docstrings as help."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from prolong.errors import UserError


def build(recipe: str, stage: str | None = None, workers: int | None = None) -> None:
    """Tokenize, pack and mix a recipe's data into training shards.

    Reads each domain's sources, tokenizes them in parallel (once per domain, cached), packs them per
    stage into sequences of the stage length (long: single-document chunks; short: concatenated with
    carry-over; sft: whole conversations with an assistant-only mask) and writes one shard per
    domain and length subset under data.shard_dir/<stage>/<domain>@<doc_len>. Finished shards are
    skipped, so an interrupted build resumes. Without --stage (a name or comma list), every stage is built.
    """
    from prolong.config import load_recipe
    from prolong.data.build import build_stage

    loaded = load_recipe(recipe)
    for spec in loaded.select_stages(stage):
        build_stage(loaded, spec, workers)


def stats(shard_dir: str, plot: str | None = None, tokenizer: str | None = None) -> None:
    """Tokens and sequences per domain, and how many documents exceed 4K-32K tokens.

    SHARD_DIR is a shard, a stage directory or the whole data.shard_dir. The length table follows the
    paper's Table 13 (share of documents longer than 4K, 8K, 16K, 32K tokens), computed on the
    tokenized documents before packing. --plot FILE.png writes a histogram of document lengths.

    SHARD_DIR may also hold MDS datasets as downloaded (ProLong's released data: one domain folder, or
    all of prolong-data-64K): every sample is read once. MDS data carries no tokenizer: --tokenizer DIR
    (the model's) checks that its token ids, and those of MDS packs linked by a build, fit its vocabulary.
    """
    from prolong.data.mds import is_mds_dir
    from prolong.data.stats import (
        check_shard_vocab,
        find_shards,
        length_stats,
        length_table,
        plot_lengths,
        print_mds_stats,
        shard_stats,
    )

    root = Path(shard_dir)
    if not root.exists():
        raise UserError(f"{root}: no such directory")
    shards = [shard_stats(p, root) for p in find_shards(root)]
    vocab_size = None
    if tokenizer:
        from prolong.model.io import load_tokenizer

        vocab_size = len(load_tokenizer(tokenizer))
    if not shards and is_mds_dir(root):
        print_mds_stats(root, vocab_size, plot, Console(width=None if sys.stdout.isatty() else 150))
        return
    if not shards:
        raise UserError(f"{root}: no finished shard found; run `prolong data build RECIPE` first")
    console = Console(width=None if sys.stdout.isatty() else 150)  # pipes would get 80 columns
    table = Table(title=f"shards under {root}")
    for column in (
        "shard",
        "kind",
        "sequences",
        "tokens",
        "token share",
        "documents",
        "skipped",
        "empty",
        "non-UTF-8",
    ):
        table.add_column(column, justify="left" if column in ("shard", "kind") else "right")
    total = sum(s.tokens for s in shards) or 1
    for s in shards:
        table.add_row(
            escape(s.name),
            s.kind,
            f"{s.sequences:,}",
            f"{s.tokens:,}",
            f"{100 * s.tokens / total:.1f}%",
            f"{s.documents:,}",
            f"{s.skipped:,}",
            f"{s.empty:,}",
            f"{s.non_utf8:,}",
        )
    console.print(table)
    if vocab_size is not None:
        check_shard_vocab(find_shards(root), vocab_size)
    lengths = length_stats(root)
    console.print(length_table(lengths))
    if plot:
        console.print(f"length histogram: {plot_lengths(lengths, plot)}")


def peek(shard_dir: str, index: int = 0, tokenizer: str | None = None) -> None:
    """Decode one packed sequence, marking document boundaries and the loss mask.

    Each document starts with a ┃doc k · n tokens┃ marker; for SFT shards the tokens that carry a
    loss (assistant tokens) are shown in green. --tokenizer defaults to the one the shard was built with.
    """
    from prolong.data.format import open_shard
    from prolong.model.io import load_tokenizer

    reader = open_shard(shard_dir)  # our shard, or MDS packs linked by the build
    if not -len(reader) <= index < len(reader):
        raise UserError(f"{shard_dir}: index {index} out of range; the shard has {len(reader)} sequences")
    path = tokenizer or reader.meta.get("tokenizer_path")
    if not path:
        raise UserError("the shard does not record its tokenizer directory; pass --tokenizer DIR")
    tok = load_tokenizer(path)
    sequence = reader[index]
    console = Console(highlight=False)
    meta = reader.meta
    console.print(
        f"[bold]{meta.get('stage')}/{meta.get('domain')}@{meta.get('doc_len')}[/] sequence {index} of "
        f"{len(reader)}: {len(sequence.input_ids)} tokens, {len(sequence.doc_lens)} documents, "
        f"attention={meta.get('attention')}"
    )
    for k, (start, length) in enumerate(zip(sequence.doc_starts, sequence.doc_lens, strict=True)):
        console.print(f"\n[bold cyan]┃doc {k} · {int(length)} tokens┃[/]", end="")
        ids = sequence.input_ids[start : start + length]
        mask = sequence.loss_mask[start : start + length] if sequence.loss_mask is not None else None
        for trained, run in _runs(ids.tolist(), None if mask is None else mask.tolist()):
            text = escape(str(tok.decode(run, skip_special_tokens=False)))
            console.print(f"[green]{text}[/]" if trained else text, end="")
    console.print()


def _runs(ids: list[int], mask: list[bool] | None) -> Iterator[tuple[bool, list[int]]]:
    """Consecutive ids with the same mask value."""
    if mask is None:
        yield False, ids
        return
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or mask[i] != mask[start]:
            yield mask[start], ids[start:i]
            start = i


def local_corpus(out_dir: str, max_mb: int = 24) -> None:
    """Gather real text found on this machine into JSONL corpora the pipeline reads.

    Code repositories from the Python installation (each package directory one repository; rows
    {repo, path, text}), prose from man pages, /usr/share/doc and licenses (docstrings as fallback),
    short paragraph documents, and instruction conversations made from docstrings (sft). The same
    machine always gives the same corpus; --max-mb caps its size.
    """
    from prolong.data.local_corpus import build_local_corpus

    summary = build_local_corpus(out_dir, max_mb << 20)
    table = Table(title=f"local corpus in {out_dir}")
    for column in ("part", "rows", "MB"):
        table.add_column(column)
    for part, numbers in summary.items():
        table.add_row(part, f"{numbers['rows']:,}", f"{numbers['bytes'] / 2**20:.1f}")
    Console().print(table)


def _texts(inputs: str) -> Iterator[str]:
    """Text of files matching `inputs`: JSONL rows (text, or chat message contents) or text files.

    Read by prolong.data.text_files like every text input: bad JSON or invalid UTF-8 in a named file
    is an error; in a directory, files that are not UTF-8 text (binary) are skipped.
    """
    from prolong.data.sources import expand_paths
    from prolong.data.text_files import jsonl_records, read_text_file

    for root in expand_paths(inputs):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for file in files:
            if ".jsonl" in file.name:
                for _, row in jsonl_records(file):
                    if isinstance(row.get("messages"), list):
                        yield "\n".join(
                            str(t.get("content", "")) for t in row["messages"] if isinstance(t, dict)
                        )
                    else:
                        yield "\n".join(v for v in row.values() if isinstance(v, str))
            elif (text := read_text_file(file, binary_ok=file != root)) is not None:
                yield text


def train_tokenizer(out_dir: str, inputs: str, vocab_size: int = 4096) -> None:
    """Train a byte-level BPE tokenizer (with chat template) on local files.

    INPUTS is a file, directory or glob: JSONL files (text fields, or chat messages) or plain text
    (.gz/.zst decompressed). Malformed JSON or invalid UTF-8 is an error naming the file and line;
    binary files inside a directory are skipped.
    The result loads with transformers' AutoTokenizer.from_pretrained(OUT_DIR).
    """
    from prolong.data.tokenizer_train import train_tokenizer as train

    out = train(_texts(inputs), out_dir, vocab_size, name=Path(out_dir).name)
    Console().print(f"tokenizer with {vocab_size} tokens written to {out}")
