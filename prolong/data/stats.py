"""Statistics of packed shards and tokenized corpora (paper Table 13) and a length histogram.

Shards of both kinds are counted: our packed shards and the links `prolong data build` writes for MDS
packs. A directory of MDS datasets (ProLong's released data as downloaded) is read directly: every
sample once, its token ids checked against a tokenizer's vocabulary when one is given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prolong.data.format import ShardReader, is_complete, open_shard, shard_meta
from prolong.data.mds import MdsDataset, MdsSummary, check_vocab, iter_datasets, scan

LENGTH_THRESHOLDS = (4096, 8192, 16384, 32768)


@dataclass
class ShardStats:
    """Sizes of one shard."""

    name: str
    kind: str
    sequences: int
    tokens: int
    documents: int
    skipped: int
    empty: int
    non_utf8: int


@dataclass
class LengthStats:
    """Raw document lengths of one domain (before packing)."""

    domain: str
    documents: int
    tokens: int
    longer_than: dict[int, float]  # threshold -> share of documents longer
    lengths: np.ndarray


def _is_shard(path: Path) -> bool:
    return is_complete(path) and ((path / "seq_offsets.npy").exists() or shard_meta(path).get("format") == "mds")


def find_shards(root: str | Path) -> list[Path]:
    """Finished shard directories (and links to MDS packs) at or below `root`, tokenized caches
    excluded, sorted."""
    root = Path(root)
    if _is_shard(root):
        return [root]
    return sorted(
        p.parent
        for p in root.rglob("meta.json")
        if _is_shard(p.parent) and ".tokenized" not in p.parts and not p.parent.name.startswith(".")
    )


def shard_stats(path: Path, root: Path) -> ShardStats:
    """Sizes and skip counts of one shard."""
    meta = shard_meta(path)
    name = path.relative_to(root).as_posix() if path != root else path.name
    packs = "mds packs " if meta.get("format") == "mds" else ""
    return ShardStats(
        name=name,
        kind=f"{packs}{meta.get('kind')}/{meta.get('attention')}",
        sequences=meta["num_sequences"],
        tokens=meta["num_tokens"],
        documents=meta["num_documents"],
        skipped=meta.get("skipped_documents", 0),
        empty=meta.get("empty_documents", 0),
        non_utf8=meta.get("non_utf8_documents", 0),
    )


def length_stats(root: str | Path) -> list[LengthStats]:
    """Raw document length shares per domain, from the tokenized corpora under `root`/.tokenized.

    Without them (a copied stage directory), the document pieces in the shards are used instead.
    """
    root = Path(root)
    candidates = [root / ".tokenized", root.parent / ".tokenized", root.parent.parent / ".tokenized"]
    cache = next((c for c in candidates if c.is_dir()), None)
    sets: dict[str, np.ndarray] = {}
    if cache is not None:
        for corpus in sorted(cache.iterdir()):
            if (corpus / "meta.json").is_file():
                domain = corpus.name.rsplit("-", 1)[0]
                sets[domain] = np.diff(np.load(corpus / "doc_offsets.npy"))
    else:
        for shard in find_shards(root):
            reader = open_shard(shard)
            if isinstance(reader, ShardReader):
                sets[shard.name] = reader.doc_lens.astype(np.int64)
            else:  # MDS packs: the documents their indices delimit
                sets[shard.name] = scan(reader.dataset, keep_doc_lens=True).lengths()
    return [_length_stats(name, lengths) for name, lengths in sets.items()]


def plot_lengths(stats: list[LengthStats], out: str | Path) -> Path:
    """Histogram of document lengths per domain (log-spaced bins) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    largest = max((int(s.lengths.max()) for s in stats if len(s.lengths)), default=2)
    bins = np.logspace(0, np.log10(max(largest, 2)) + 0.05, 40)
    for s in stats:
        if len(s.lengths):
            ax.hist(
                s.lengths,
                bins=bins.tolist(),
                histtype="step",
                linewidth=1.5,
                label=f"{s.domain} ({s.documents:,} docs)",
            )
    for t in LENGTH_THRESHOLDS:
        ax.axvline(t, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("document length (tokens, log scale; dotted: 4K, 8K, 16K, 32K)")
    ax.set_ylabel("number of documents")
    ax.set_title("Document lengths per domain")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def stats_json(root: str | Path) -> str:
    """All statistics as JSON (for scripts)."""
    root = Path(root)
    shards = [shard_stats(p, root).__dict__ for p in find_shards(root)]
    lengths = [{k: v for k, v in s.__dict__.items() if k != "lengths"} for s in length_stats(root)]
    return json.dumps({"shards": shards, "lengths": lengths}, indent=2)


# ------------------------------------------------------------------------------ MDS datasets as downloaded
@dataclass
class MdsStats:
    """One MDS dataset read in full."""

    name: str
    summary: MdsSummary


def mds_stats(root: str | Path, show_progress: bool = True) -> list[MdsStats]:
    """Every MDS dataset at or below `root` (a domain folder each), each sample read once."""
    root = Path(root)
    found = []
    for path in iter_datasets(root):
        name = path.relative_to(root).as_posix() if path != root else path.name
        summary = scan(MdsDataset([path]), keep_doc_lens=True, description=f"reading {name}", show_progress=show_progress)
        found.append(MdsStats(name, summary))
    return found


def check_mds_vocab(found: list[MdsStats], vocab_size: int) -> None:
    """Refuse datasets whose token ids do not fit `vocab_size`; the error names the file and sample."""
    for stats in found:
        if stats.summary.max_token_id >= 0:
            check_vocab(stats.summary.max_token_id, vocab_size, stats.summary.max_token_where)


def check_shard_vocab(paths: list[Path], vocab_size: int) -> None:
    """Refuse links to MDS packs whose largest token id (recorded by the build) does not fit."""
    for path in paths:
        meta = shard_meta(path)
        if "max_token_id" in meta:
            check_vocab(int(meta["max_token_id"]), vocab_size, str(path))


def length_table(lengths: list[LengthStats], title: str = "document lengths before packing") -> Any:
    """The paper's Table 13 as a rich Table: share of documents longer than 4K ... 32K tokens."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{title} (paper Table 13)")
    table.add_column("domain")
    table.add_column("documents", justify="right")
    table.add_column("tokens", justify="right")
    for t in LENGTH_THRESHOLDS:
        table.add_column(f">{t // 1024}K", justify="right")
    for s in lengths:
        shares = [f"{100 * s.longer_than[t]:.1f}%" for t in LENGTH_THRESHOLDS]
        table.add_row(escape(s.domain), f"{s.documents:,}", f"{s.tokens:,}", *shares)
    return table


def _length_stats(domain: str, lengths: np.ndarray) -> LengthStats:
    return LengthStats(
        domain=domain,
        documents=len(lengths),
        tokens=int(lengths.sum()),
        longer_than={t: float((lengths > t).mean()) if len(lengths) else 0.0 for t in LENGTH_THRESHOLDS},
        lengths=lengths,
    )


def print_mds_stats(root: Path, vocab_size: int | None, plot: str | None, console: Any) -> None:
    """`prolong data stats` on MDS datasets as downloaded: one row per dataset, then Table 13 over the
    documents their packs delimit (or their documents, unpacked); then the vocabulary check."""
    from rich.markup import escape
    from rich.table import Table

    found = mds_stats(root)
    table = Table(title=f"MDS datasets under {root}")
    for column in ("dataset", "kind", "samples", "tokens", "documents", "sample length", "largest token id"):
        table.add_column(column, justify="left" if column in ("dataset", "kind") else "right")
    for s in found:
        m = s.summary
        span = f"{m.min_length:,}" if m.min_length == m.max_length else f"{m.min_length:,}-{m.max_length:,}"
        kind = "packed" if m.packed else "documents"
        ids = f"{m.max_token_id:,}" + ("" if vocab_size is None else f" (vocabulary {vocab_size:,})")
        table.add_row(escape(s.name), kind, f"{m.samples:,}", f"{m.tokens:,}", f"{m.documents:,}", span, ids)
    console.print(table)
    lengths = [_length_stats(s.name, s.summary.lengths()) for s in found]
    packed = any(s.summary.packed for s in found)
    console.print(length_table(lengths, "documents as packed (pieces of longer ones)" if packed else "document lengths"))
    if plot:
        console.print(f"length histogram: {plot_lengths(lengths, plot)}")
    if vocab_size is None:
        console.print("token ids not checked: MDS data carries no tokenizer; pass --tokenizer DIR (the model's)")
    else:
        check_mds_vocab(found, vocab_size)
