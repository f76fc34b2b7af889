"""Perplexity by position: loss on the last N tokens of long documents, per position bucket.

A secondary signal only (the ProLong paper shows it does not rank long-context models well). The document
runs through the model in chunks with a KV cache, so only one chunk's logits exist at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from prolong.errors import UserError

TEXT_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".jsonl.zst")


def read_texts(path: str | Path) -> Iterable[str]:
    """Texts of a .txt file, a .jsonl/.jsonl.gz/.jsonl.zst file ('text' field) or a directory of them.

    Read by prolong.data.text_files: malformed JSON, a row without a string 'text' or invalid UTF-8 is
    an error naming the file and line.
    """
    from prolong.data.text_files import jsonl_records, read_text_file

    root = Path(path)
    if not root.exists():
        raise UserError(f"{root} does not exist; expected a .txt/.jsonl file (field 'text') or a directory")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.name.endswith(TEXT_SUFFIXES))
    for file in files:
        if ".jsonl" in file.name:
            for where, row in jsonl_records(file):
                if not isinstance(row.get("text"), str):
                    raise UserError(f"{where}: expected a string field 'text'; the row has {sorted(row)}")
                yield row["text"]
        else:
            yield str(read_text_file(file))


@torch.inference_mode()
def token_losses(model: Any, ids: Sequence[int], last_n: int, chunk: int = 2048) -> torch.Tensor:
    """Next-token losses (nats) of the last `last_n` positions of `ids`, computed chunk by chunk."""
    from transformers import DynamicCache

    from prolong.eval.engine import cache_keyword

    device = next(model.parameters()).device
    tokens = torch.tensor([list(ids)], dtype=torch.long, device=device)
    total = tokens.shape[1]
    first_scored = total - last_n  # position whose *prediction* of the next token is scored first
    cache = DynamicCache(config=model.config)
    losses, cache_argument = [], {cache_keyword(model): cache}
    for start in range(0, total - 1, chunk):
        end = min(start + chunk, total - 1)
        out = model(input_ids=tokens[:, start:end], use_cache=True, **cache_argument)
        lo = max(start, first_scored - 1)
        if lo < end:
            logits = out.logits[0, lo - start:].float()
            losses.append(F.cross_entropy(logits, tokens[0, lo + 1:end + 1], reduction="none"))
    return torch.cat(losses)[-last_n:].cpu()


def perplexity_by_position(model: Any, tokenizer: Any, texts: Iterable[str], seq_len: int, last_n: int,
                           num_buckets: int = 8, max_docs: int = 10, chunk: int = 2048) -> dict[str, Any]:
    """Mean loss and perplexity per bucket of the last `last_n` positions of `seq_len`-token documents.

    Documents shorter than `seq_len` tokens are skipped; longer ones are cut to their first `seq_len`.
    """
    if not 0 < last_n < seq_len:
        raise UserError(f"last_n ({last_n}) must be between 1 and seq_len - 1 ({seq_len - 1})")
    sums = torch.zeros(num_buckets, dtype=torch.float64)
    counts = torch.zeros(num_buckets, dtype=torch.float64)
    used = 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        if len(ids) < seq_len:
            continue
        losses = token_losses(model, ids[:seq_len], last_n, chunk).double()
        bucket = torch.arange(last_n) * num_buckets // last_n
        sums.index_add_(0, bucket, losses)
        counts.index_add_(0, bucket, torch.ones_like(losses))
        used += 1
        if used >= max_docs:
            break
    if used == 0:
        raise UserError(f"no document has {seq_len} tokens; point at longer documents or lower seq_len")
    start = seq_len - last_n
    buckets = []
    for b in range(num_buckets):
        mean = float(sums[b] / counts[b])
        buckets.append({"start": start + b * last_n // num_buckets, "end": start + (b + 1) * last_n // num_buckets,
                        "loss": mean, "perplexity": math.exp(mean)})
    overall = float(sums.sum() / counts.sum())
    return {"seq_len": seq_len, "last_n": last_n, "documents": used, "loss": overall,
            "perplexity": math.exp(overall), "buckets": buckets}
