"""`prolong data build` for domains whose sources are MDS datasets (prolong.data.mds).

Packed MDS data (ProLong's released prolong-data-64K/-512K, prolong-ultrachat-64K) is not re-packed:
the build reads every pack once (lengths against the stage's seq_len, document boundaries, masks, token
ids against the recipe tokenizer's vocabulary, the index's hashes) and writes, in place of a shard, a
directory holding only meta.json that points at the data. The mixture then samples those packs by
token proportion like any other shard. Unpacked MDS documents are handed to the packer as they are
(token ids, no tokenizing).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from prolong.config import DomainSpec, MixtureEntry, Recipe, StageSpec
from prolong.data.format import is_complete, shard_meta
from prolong.data.mds import MdsDataset, MdsDocuments, MdsError, scan, write_pack_link
from prolong.data.mixture import shard_identity, shard_path
from prolong.data.sources import expand_paths
from prolong.data.tokenize import SpecialIds, tokenizer_identity


def mds_cache_dir(recipe: Recipe) -> Path:
    """Where compressed shards are decompressed when their own directory is read-only."""
    return Path(recipe.data.shard_dir) / ".mds-cache"


def domain_dataset(recipe: Recipe, domain: DomainSpec) -> MdsDataset:
    """The MDS datasets of a domain's sources (paths or globs of directories), in order."""
    paths = [path for source in domain.sources for path in expand_paths(source.path)]
    return MdsDataset(paths, mds_cache_dir(recipe))


def is_packed(dataset: MdsDataset) -> bool:
    """Packed sequences carry their document boundaries (`indices`); documents do not."""
    return "indices" in dataset.columns()


def link_packs(
    recipe: Recipe,
    stage: StageSpec,
    domain: DomainSpec,
    entries: list[MixtureEntry],
    tokenizer: Any,
    tokenizer_dir: str,
    console: Console,
) -> list[dict[str, Any]]:
    """Check a packed MDS domain for `stage` and point its shard directory at it (skipped when done)."""
    where = f"stage {stage.name!r}, domain {domain.name!r}"
    if any(e.doc_len not in (None, stage.seq_len) for e in entries) or len(entries) > 1:
        raise MdsError(
            f"{where}: doc_len splits documents into length subsets, but MDS packs are used as they are; "
            "each folder of the released data (e.g. book-524288, book-65536) is its own domain"
        )
    if domain.length_sampling is not None or any(s.max_documents is not None for s in domain.sources):
        raise MdsError(f"{where}: length_sampling and max_documents apply to documents, not to MDS packs")
    dataset = domain_dataset(recipe, domain)
    identity = tokenizer_identity(tokenizer)
    sft = domain.kind == "sft"
    target = shard_path(recipe.data.shard_dir, stage.name, domain.name, stage.seq_len)
    key = _key(dataset.fingerprint(), domain.model_dump(), identity, stage.seq_len, stage.attention)
    if is_complete(target) and shard_meta(target).get("build_key") == key:
        console.print(f"[green]done[/] {stage.name}/{domain.name}: MDS packs, checked")
        return [shard_meta(target)]
    if not sft and "mask" in dataset.columns():
        console.print(f"{domain.name}: its mask column is not used in a pretraining domain (as in ProLong)")
    summary = scan(
        dataset,
        seq_len=stage.seq_len,
        use_mask=sft,
        vocab_size=len(tokenizer),
        description=f"checking {domain.name} (MDS packs)",
        show_progress=not console.quiet,
    )
    if summary.samples == 0:
        raise MdsError(f"{where}: its MDS data ({', '.join(map(str, dataset.paths))}) holds no sample")
    meta = {
        **shard_identity(recipe, stage, domain, stage.seq_len, identity, tokenizer_dir, key),
        "has_loss_mask": sft,
        "source_documents": summary.documents,
        "subset_documents": summary.documents,
        "skipped_documents": 0,
        "empty_documents": 0,
        "non_utf8_documents": 0,
    }
    written = write_pack_link(target, dataset, summary, meta)
    console.print(
        f"[green]linked[/] {stage.name}/{domain.name}: {summary.samples:,} MDS packs of {stage.seq_len} tokens, "
        f"{summary.documents:,} documents, largest token id {summary.max_token_id} (used as they are)"
    )
    return [written]


def mds_documents(recipe: Recipe, domain: DomainSpec, tokenizer: Any) -> MdsDocuments:
    """A domain's unpacked MDS documents, ready for the packer (framed like tokenized text)."""
    dataset = domain_dataset(recipe, domain)
    special = SpecialIds.of(tokenizer)
    limits = [s.max_documents for s in domain.sources]
    limit = None if len(limits) > 1 or limits[0] is None else limits[0]
    if len(limits) > 1 and any(n is not None for n in limits):
        raise MdsError(f"domain {domain.name!r}: max_documents on MDS sources applies to a domain of one source")
    meta = {"tokenizer": tokenizer_identity(tokenizer)}
    return MdsDocuments(dataset, meta, special.bos, special.eos, domain.kind == "sft", limit, len(tokenizer))


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
