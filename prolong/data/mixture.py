"""A stage's data: the mixture of its shards as a deterministic function of (seed, global sample index).

Which component (domain, length subset) sample g comes from is read off a low-discrepancy sequence
(frac(offset + g * golden ratio), shuffled inside blocks of 64), so every window of samples holds each
component in its proportion to within a few samples. The k-th sample of a component is sequence
perm_epoch[k mod N] of its shard, with a fresh seeded permutation every epoch. Nothing depends on the
number of ranks: resuming or changing the world size needs only the global sample index.

A component's shard is one of prolong's packed shards or a link to MDS packs (ProLong's released data,
prolong.data.mds): both give sequences by index, so sampling and resume are the same for both.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prolong.config import DomainSpec, Recipe, StageSpec
from prolong.data.format import PackedSequence, ShardReader, is_complete, open_shard
from prolong.data.mds import MdsPacks, check_vocab
from prolong.data.sources import stable_seed
from prolong.data.tokenize import tokenizer_identity
from prolong.errors import UserError

_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0
_BLOCK = 64  # samples shuffled together: breaks the low-discrepancy sequence's visible pattern
_CHUNK = 1 << 16  # samples whose component assignment is computed (and cached) at once


class TokenizerMismatchError(UserError):
    """Shards built with another tokenizer than the model's."""


def check_tokenizer(meta: dict[str, Any], tokenizer: Any) -> None:
    """Refuse shards whose tokenizer (vocabulary hash) differs from `tokenizer`."""
    ours = tokenizer_identity(tokenizer)
    theirs = meta.get("tokenizer") or {}
    if theirs.get("vocab_hash") != ours["vocab_hash"]:
        raise TokenizerMismatchError(
            f"shard {meta.get('domain', '?')}@{meta.get('doc_len', '?')} was built with tokenizer "
            f"{theirs.get('name')!r} (vocabulary hash {theirs.get('vocab_hash')}), but the model uses "
            f"{ours['name']!r} (vocabulary hash {ours['vocab_hash']}); token ids would mean different "
            "things. Rebuild the data with this model's tokenizer (`prolong data build`)."
        )


def shard_path(shard_dir: str | Path, stage: str, domain: str, doc_len: int) -> Path:
    """Where the shard of one mixture component lives: <shard_dir>/<stage>/<domain>@<doc_len>."""
    return Path(shard_dir) / stage / f"{domain}@{doc_len}"


def shard_identity(
    recipe: Recipe, stage: StageSpec, domain: DomainSpec, doc_len: int, tokenizer: dict[str, Any],
    tokenizer_dir: str, build_key: str,
) -> dict[str, Any]:
    """What every shard's meta records of its making (packed here or linked MDS packs alike): the fields
    the mixture checks (tokenizer, seq_len, attention) and `prolong data inspect` shows."""
    return {
        "tokenizer": tokenizer,
        "tokenizer_path": str(Path(tokenizer_dir).resolve()),
        "stage": stage.name,
        "domain": domain.name,
        "kind": domain.kind,
        "attention": stage.attention,
        "seq_len": stage.seq_len,
        "doc_len": doc_len,
        "seed": recipe.seed,
        "build_key": build_key,
    }


@dataclass
class Component:
    """One mixture entry with its shard."""

    domain: str
    doc_len: int
    proportion: float
    reader: ShardReader | MdsPacks  # our packed shard, or ProLong's released MDS packs as they are


class StageMixture:
    """Packed sequences of one stage, sample g a deterministic function of (seed, g)."""

    def __init__(self, components: list[Component], seed: int) -> None:
        if not components:
            raise ValueError("a mixture needs at least one component")
        self.components = components
        self.seed = seed
        # Proportions are of tokens: sample a component in proportion to share / mean sequence length.
        mean_len = np.asarray([c.reader.meta["num_tokens"] / len(c.reader) for c in components])
        weights = np.asarray([c.proportion for c in components]) / mean_len
        self.sample_probs = weights / weights.sum()
        self._edges = np.cumsum(self.sample_probs)
        self._edges[-1] = 1.0 + 1e-12
        self._offset = (stable_seed(seed, "mixture") % 2**32) / 2**32
        self._chunk_counts: list[np.ndarray] = [np.zeros(len(components), dtype=np.int64)]
        self._chunks: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._perms: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    @classmethod
    def open(cls, shard_dir: str | Path, stage: StageSpec, seed: int, tokenizer: Any = None) -> StageMixture:
        """Open the shards of `stage` under `shard_dir`; with `tokenizer`, refuse shards built by another."""
        components = []
        for entry in stage.mixture:
            doc_len = entry.doc_len or stage.seq_len
            path = shard_path(shard_dir, stage.name, entry.domain, doc_len)
            if not is_complete(path):
                raise UserError(
                    f"{path}: shard missing or incomplete; run `prolong data build RECIPE --stage {stage.name}`"
                )
            reader = open_shard(path)
            if len(reader) == 0:
                raise UserError(
                    f"{path}: no sequences (no document of domain {entry.domain!r} reaches {doc_len} tokens?); "
                    "add data or lower the length"
                )
            if reader.meta.get("seq_len") != stage.seq_len:
                raise UserError(
                    f"{path}: built for seq_len={reader.meta.get('seq_len')}, stage uses {stage.seq_len}; rebuild"
                )
            if tokenizer is not None:
                check_tokenizer(reader.meta, tokenizer)
                if isinstance(reader, MdsPacks):  # MDS ids carry no tokenizer: their range is the check
                    check_vocab(reader.meta["max_token_id"], len(tokenizer), str(path))
                    reader.vocab_size = len(tokenizer)
            components.append(Component(entry.domain, doc_len, entry.proportion, reader))
        hashes = {c.reader.meta.get("tokenizer", {}).get("vocab_hash") for c in components}
        if len(hashes) > 1:
            raise TokenizerMismatchError(
                f"shards of stage {stage.name!r} were built with different tokenizers: {sorted(map(str, hashes))}"
            )
        return cls(components, seed)

    @property
    def meta(self) -> dict[str, Any]:
        """meta.json of the first shard (tokenizer, seq_len, attention mode are shared)."""
        return self.components[0].reader.meta

    # ------------------------------------------------------------------ component assignment
    def _chunk(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """(component of each sample in chunk c, its occurrence index within the chunk)."""
        if c in self._chunks:
            self._chunks.move_to_end(c)
            return self._chunks[c]
        g = np.arange(c * _CHUNK, (c + 1) * _CHUNK, dtype=np.int64)
        keys = np.random.default_rng(stable_seed(self.seed, "blocks", c)).random((_CHUNK // _BLOCK, _BLOCK))
        shuffled = (g.reshape(-1, _BLOCK)[:, :1] + np.argsort(keys, axis=1)).reshape(-1)
        u = np.mod(self._offset + shuffled.astype(np.float64) * _GOLDEN, 1.0)
        comp = np.searchsorted(self._edges, u, side="right")
        occurrence = np.empty(_CHUNK, dtype=np.int64)
        for k in range(len(self.components)):
            where = np.nonzero(comp == k)[0]
            occurrence[where] = np.arange(len(where))
        self._chunks[c] = (comp, occurrence)
        if len(self._chunks) > 8:
            self._chunks.popitem(last=False)
        return comp, occurrence

    def _counts_before_chunk(self, c: int) -> np.ndarray:
        while len(self._chunk_counts) <= c:
            done = len(self._chunk_counts) - 1
            comp, _ = self._chunk(done)
            self._chunk_counts.append(
                self._chunk_counts[-1] + np.bincount(comp, minlength=len(self.components))
            )
        return self._chunk_counts[c]

    def _permutation(self, k: int, epoch: int) -> np.ndarray:
        key = (k, epoch)
        if key not in self._perms:
            component = self.components[k]
            rng = np.random.default_rng(stable_seed(self.seed, component.domain, component.doc_len, epoch))
            self._perms[key] = rng.permutation(len(component.reader))
            if len(self._perms) > 2 * len(self.components):
                self._perms.popitem(last=False)
        return self._perms[key]

    def locate(self, index: int) -> tuple[int, int]:
        """(component, sequence in its shard) of global sample `index`."""
        if index < 0:
            raise IndexError(f"sample index {index} is negative")
        c, within = divmod(index, _CHUNK)
        comp, occurrence = self._chunk(c)
        k = int(comp[within])
        nth = int(self._counts_before_chunk(c)[k] + occurrence[within])
        size = len(self.components[k].reader)
        epoch, position = divmod(nth, size)
        return k, int(self._permutation(k, epoch)[position])

    def __getitem__(self, index: int) -> PackedSequence:
        k, i = self.locate(index)
        return self.components[k].reader[i]

    def domain_of(self, index: int) -> str:
        """Domain name of sample `index`."""
        return self.components[self.locate(index)[0]].domain

    def attention_cost(self, index: int) -> int:
        """Sum of squared document lengths of sample `index` (read from the index, not the tokens)."""
        k, i = self.locate(index)
        reader = self.components[k].reader
        if reader.meta.get("attention") == "cross_document":
            return reader.seq_len_of(i) ** 2
        return int(np.square(reader.doc_lens_of(i).astype(np.int64)).sum())

    # ------------------------------------------------------------------ steps and ranks
    @staticmethod
    def indices_for_step(step: int, sequences_per_step: int) -> list[int]:
        """Global sample indices of optimizer step `step`."""
        return list(range(step * sequences_per_step, (step + 1) * sequences_per_step))

    def rank_share(self, indices: list[int], dp_rank: int, dp_size: int, reorder: bool = True) -> list[int]:
        """This data-parallel rank's samples of one step, in processing (accumulation) order.

        With `reorder` (ProLong's minibatch reordering) the step's samples are sorted by attention cost
        and dealt in rounds of dp_size, so at each accumulation index all ranks hold similar costs; the
        deal alternates direction each round to even out the ranks' totals. The set of samples forming
        the step is unchanged, so is the gradient.
        """
        if len(indices) % dp_size:
            raise ValueError(
                f"{len(indices)} samples per step do not split over {dp_size} data-parallel ranks"
            )
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank={dp_rank} outside [0, {dp_size})")
        if not reorder:
            return list(indices[dp_rank::dp_size])
        by_cost = sorted(indices, key=lambda g: (-self.attention_cost(g), g))
        share = []
        for round_ in range(len(indices) // dp_size):
            group = by_cost[round_ * dp_size : (round_ + 1) * dp_size]
            share.append(group[dp_rank if round_ % 2 == 0 else dp_size - 1 - dp_rank])
        return share
