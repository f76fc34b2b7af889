"""Build a recipe stage's shards: read sources, tokenize (cached per domain), pack, write atomically.

Resumable: a finished shard whose build key (source files with their sizes and mtimes, tokenizer,
lengths, seed, mode) matches is skipped; the tokenized corpus of a domain is reused by every stage.
A domain whose shards are out of date has them removed before it is rebuilt, and a domain that gives
no document, or a length subset that gives no sequence, is an error naming the domain: a failed build
leaves no shard the training mixture would open.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from prolong.config import DomainSpec, Recipe, StageSpec
from prolong.data.format import ShardReader, is_complete
from prolong.data.mds import MdsDocuments
from prolong.data.mds_build import domain_dataset, is_packed, link_packs, mds_documents
from prolong.data.mixture import shard_identity, shard_path
from prolong.data.pack import (
    assign_length_subsets,
    length_sampling_repeats,
    plan_concatenated,
    plan_long,
    plan_sft,
    shuffled_order,
    write_shard,
)
from prolong.data.sources import DocumentStream, document_text, source_fingerprint, stable_seed
from prolong.data.tokenize import TokenizedDocs, tokenize_documents, tokenizer_identity
from prolong.errors import UserError

TOKENIZER_TRAIN_CHARS = 32 << 20  # text a demo tokenizer is trained on, split over the domains


def _key(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def resolve_tokenizer(recipe: Recipe, show_progress: bool = True, train_missing: bool = True) -> str:
    """The tokenizer directory of a recipe: tokenizer.path, a trained one, or the model's own.

    With `tokenizer.train_vocab_size`, a byte-level BPE is trained on the recipe's own sources into
    <output_dir>/tokenizer (reused when present); train_missing=False (training, which must use the
    tokenizer its shards were built with) refuses instead of training one.
    """
    spec = recipe.tokenizer
    if spec.path is not None:
        return spec.path
    if spec.train_vocab_size is not None:
        out = Path(recipe.output_dir) / "tokenizer"
        if not (out / "tokenizer.json").exists():
            if not train_missing:
                raise UserError(f"no tokenizer under {out} yet; run `prolong data build` first")
            from prolong.data.tokenizer_train import train_tokenizer

            if show_progress:
                Console(stderr=True).print(
                    f"training a {spec.train_vocab_size}-token BPE tokenizer into {out}"
                )
            train_tokenizer(recipe_texts(recipe), out, spec.train_vocab_size, name=f"{recipe.name}-bpe")
        return str(out)
    if recipe.model.path is None:
        raise UserError("recipe has neither tokenizer.path, tokenizer.train_vocab_size nor model.path")
    return recipe.model.path


def recipe_texts(recipe: Recipe, max_chars: int = TOKENIZER_TRAIN_CHARS) -> Iterator[str]:
    """Text of the recipe's domains for tokenizer training, an equal share of `max_chars` each."""
    share = max_chars // len(recipe.data.domains)
    for domain in recipe.data.domains:
        used = 0
        for document in DocumentStream(domain.sources, domain.kind, recipe.seed):
            text = document_text(document)
            yield text[: share - used]
            used += len(text)
            if used >= share:
                break


def tokenized_domain(
    recipe: Recipe,
    domain: DomainSpec,
    tokenizer_dir: str,
    tokenizer: Any,
    workers: int | None,
    show_progress: bool,
) -> TokenizedDocs | MdsDocuments:
    """The domain's tokenized corpus, built once and reused (keyed by sources, tokenizer and seed)."""
    if domain.is_mds:  # already token ids: read where they are, nothing to tokenize
        return mds_documents(recipe, domain, tokenizer)
    key = _key(
        [s.model_dump() for s in domain.sources],
        source_fingerprint(domain.sources),
        domain.kind,
        tokenizer_identity(tokenizer)["vocab_hash"],
        recipe.seed,
    )
    out = Path(recipe.data.shard_dir) / ".tokenized" / f"{domain.name}-{key}"
    if not (out / "meta.json").is_file():
        stream = DocumentStream(domain.sources, domain.kind, recipe.seed)
        tokenize_documents(
            stream, tokenizer_dir, out, workers, f"tokenizing {domain.name}", show_progress, tokenizer
        )
    return TokenizedDocs(out)


def build_stage(
    recipe: Recipe, stage: StageSpec, workers: int | None = None, show_progress: bool = True
) -> list[dict[str, Any]]:
    """Write every shard of `stage`; returns their meta (finished shards are skipped)."""
    from prolong.model.io import load_tokenizer

    console = Console(stderr=True, quiet=not show_progress)
    tokenizer_dir = resolve_tokenizer(recipe, show_progress)
    tokenizer = load_tokenizer(tokenizer_dir)
    identity = tokenizer_identity(tokenizer)
    workers = workers or recipe.data.num_workers
    metas = []
    for domain_name in dict.fromkeys(e.domain for e in stage.mixture):
        domain = recipe.domain(domain_name)
        entries = [e for e in stage.mixture if e.domain == domain_name]
        if domain.is_mds and is_packed(domain_dataset(recipe, domain)):  # released packs: used as they are
            metas += link_packs(recipe, stage, domain, entries, tokenizer, tokenizer_dir, console)
            continue
        doc_lens = [e.doc_len or stage.seq_len for e in entries]
        targets = [shard_path(recipe.data.shard_dir, stage.name, domain_name, n) for n in doc_lens]
        key = _key(
            source_fingerprint(domain.sources),
            domain.model_dump(),
            identity,
            recipe.seed,
            stage.seq_len,
            stage.attention,
            [(e.proportion, n) for e, n in zip(entries, doc_lens, strict=True)],
        )
        if all(is_complete(t) and ShardReader(t).meta.get("build_key") == key for t in targets):
            console.print(f"[green]done[/] {stage.name}/{domain_name}: {', '.join(t.name for t in targets)}")
            metas += [ShardReader(t).meta for t in targets]
            continue
        for target in targets:  # built from other sources or settings: never to be read if this fails
            if target.exists():
                console.print(f"removing out-of-date shard {target}")
                shutil.rmtree(target)
        docs = tokenized_domain(recipe, domain, tokenizer_dir, tokenizer, workers, show_progress)
        counts = docs.meta["counts"]
        if counts["non_utf8"]:
            console.print(f"{domain_name}: skipped {counts['non_utf8']:,} files that are not UTF-8 text")
        if len(docs) == 0:
            docs.close()
            raise UserError(_no_documents(domain, counts))
        metas += _pack_domain(
            recipe,
            stage,
            domain,
            docs,
            doc_lens,
            [e.proportion for e in entries],
            targets,
            identity,
            key,
            tokenizer_dir,
        )
        for meta in metas[-len(targets) :]:
            console.print(
                f"[green]wrote[/] {stage.name}/{meta['domain']}@{meta['doc_len']}: "
                f"{meta['num_sequences']:,} sequences, {meta['num_tokens']:,} tokens"
            )
        docs.close()
    return metas


def _pack_domain(
    recipe: Recipe,
    stage: StageSpec,
    domain: DomainSpec,
    docs: TokenizedDocs | MdsDocuments,
    doc_lens: list[int],
    proportions: list[float],
    targets: list[Path],
    identity: dict[str, str],
    key: str,
    tokenizer_dir: str,
) -> list[dict[str, Any]]:
    """Pack one domain into its length subsets (one shard each)."""
    seed = stable_seed(recipe.seed, stage.name, domain.name)
    lengths = docs.lengths
    cross = stage.attention == "cross_document"
    single_doc_chunks = domain.kind == "long" and not cross
    if single_doc_chunks:
        subsets = assign_length_subsets(lengths, doc_lens, proportions, seed)
    elif len(doc_lens) > 1:  # cross_document: subsets still get distinct documents, by token share
        subsets = assign_length_subsets(lengths, [1] * len(doc_lens), proportions, seed)
    else:
        subsets = np.zeros(len(lengths), dtype=np.int64)
    sampling = domain.length_sampling
    repeats = (
        length_sampling_repeats(
            lengths, sampling.threshold, sampling.long_factor, sampling.short_factor, seed
        )
        if sampling is not None
        else None
    )
    counts = docs.meta["counts"]
    planned = []  # every subset is planned (and checked non-empty) before any shard is written
    for j, (doc_len, target) in enumerate(zip(doc_lens, targets, strict=True)):
        selected = np.nonzero(subsets == j)[0]
        order = shuffled_order(selected, repeats, stable_seed(seed, doc_len))
        if single_doc_chunks:
            plan = plan_long(order, lengths, stage.seq_len, doc_len, stable_seed(seed, doc_len, "long"))
            skipped = int((subsets < 0).sum())
        elif domain.kind == "sft":
            plan = plan_sft(order, lengths, stage.seq_len)
            skipped = int((lengths[selected] > stage.seq_len).sum())
        else:
            plan = plan_concatenated(order, lengths, stage.seq_len)
            skipped = 0
        meta = {
            **shard_identity(recipe, stage, domain, doc_len, identity, tokenizer_dir, key),
            "source_documents": counts["documents"],
            "subset_documents": len(selected),
            "skipped_documents": skipped,
            "empty_documents": counts["empty"],
            "non_utf8_documents": counts["non_utf8"],
            "bos_id": docs.meta["bos_id"],
            "eos_id": docs.meta["eos_id"],
        }
        first = next(plan, None)
        if first is None:
            mode = "long" if single_doc_chunks else "sft" if domain.kind == "sft" else "concatenated"
            raise UserError(_no_sequences(domain, stage, doc_len, lengths, selected, mode))
        planned.append((itertools.chain([first], plan), target, meta))
    return [write_shard(docs, plan, target, meta, domain.kind == "sft") for plan, target, meta in planned]


def _no_documents(domain: DomainSpec, counts: dict[str, int]) -> str:
    sources = ", ".join(f"{s.path} ({s.type})" for s in domain.sources)
    seen = []
    if counts["empty"]:
        seen.append(f"{counts['empty']:,} empty documents dropped")
    if counts["non_utf8"]:
        seen.append(f"{counts['non_utf8']:,} files skipped as not UTF-8 text")
    field = "text_field" if domain.kind != "sft" else "messages_field (or prompt_field)"
    return (
        f"domain {domain.name!r}: its sources give no document to train on ({sources}: "
        f"{', '.join(seen) or 'nothing in them'}); point the source at a corpus with content, check its "
        f"{field}, or drop the domain from the mixtures"
    )


def _no_sequences(
    domain: DomainSpec, stage: StageSpec, doc_len: int, lengths: np.ndarray, selected: np.ndarray, mode: str
) -> str:
    """Why a length subset gives no sequence; `lengths`: tokens of every document of the domain,
    `selected`: the documents of the subset."""
    where = f"stage {stage.name!r}, domain {domain.name!r}@{doc_len}"
    mine = lengths[selected]
    if mode == "sft":
        why = f"each of its {len(mine):,} conversations is longer than seq_len {stage.seq_len}"
    elif mode == "long" and not (lengths >= doc_len).any():
        why = f"none of its {len(lengths):,} documents reaches {doc_len} tokens (the longest has {lengths.max()})"
    elif mode == "long":
        why = f"no document was assigned to it ({int((lengths >= doc_len).sum()):,} documents reach {doc_len} tokens)"
    else:
        why = f"its {len(mine):,} documents hold {int(mine.sum()):,} tokens, less than one sequence"
    return f"{where}: no sequence to write: {why}; add data or lower the length"
