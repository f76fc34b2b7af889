"""Statistics of packed shards and tokenized corpora (paper Table 13) and a length histogram."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prolong.data.format import ShardReader, is_complete

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


def find_shards(root: str | Path) -> list[Path]:
    """Finished shard directories at or below `root` (tokenized caches excluded), sorted."""
    root = Path(root)
    if is_complete(root) and (root / "seq_offsets.npy").exists():
        return [root]
    return sorted(
        p.parent
        for p in root.rglob("meta.json")
        if (p.parent / "seq_offsets.npy").exists()
        and ".tokenized" not in p.parts
        and not p.parent.name.startswith(".")
    )


def shard_stats(path: Path, root: Path) -> ShardStats:
    """Sizes and skip counts of one shard."""
    meta = ShardReader(path).meta
    name = path.relative_to(root).as_posix() if path != root else path.name
    return ShardStats(
        name=name,
        kind=f"{meta.get('kind')}/{meta.get('attention')}",
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
            sets[shard.name] = ShardReader(shard).doc_lens.astype(np.int64)
    return [
        LengthStats(
            domain=name,
            documents=len(lengths),
            tokens=int(lengths.sum()),
            longer_than={t: float((lengths > t).mean()) if len(lengths) else 0.0 for t in LENGTH_THRESHOLDS},
            lengths=lengths,
        )
        for name, lengths in sets.items()
    ]


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
                bins=bins,
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
