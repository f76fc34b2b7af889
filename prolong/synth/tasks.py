"""The three synthetic tasks: what each work item asks the generator and the examples it yields.

A work item is either a QA pair (one generator call on a random chunk; it yields a QA example, whose
context is the whole document, and a RAG example, whose context is a shuffled list of chunks with
the gold one among them) or a book summary (recursive summarization, many calls). Every random choice
of an item comes from its own seeded generator, so an item's content does not depend on how many
items are planned or in which order they run.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prolong.data.sources import stable_seed
from prolong.synth import prompts
from prolong.synth.documents import LongDocument
from prolong.synth.parse import parse_qa

Generate = Callable[[list[str]], list[str]]  # prompts -> replies (max_new_tokens already bound)


@dataclass
class ItemResult:
    """What one work item produced: examples to write, or the reason it was skipped."""

    examples: list[dict[str, Any]] = field(default_factory=list)
    malformed: str | None = None  # why the generator's reply was unusable
    calls: int = 0  # generator calls made


def conversation(task: str, item: str, user: str, assistant: str, **meta: Any) -> dict[str, Any]:
    """One training example: a chat the SFT packing reads (`messages`), plus its task and origin."""
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages, "task": task, "item": item, **meta}


def item_rng(seed: int, item: str, purpose: str) -> random.Random:
    """A generator for one purpose of one item (choices stay put when other draws change)."""
    return random.Random(stable_seed(seed, item, purpose))


def rag_passages(
    document: LongDocument, gold: int, k: int | None, rng: random.Random
) -> tuple[list[str], int]:
    """(shuffled passages, position of the gold chunk): the gold chunk plus k-1 other chunks of the
    document (all of them when k is None or the document has fewer)."""
    others = [i for i in range(document.num_chunks) if i != gold]
    if k is not None and k - 1 < len(others):
        others = rng.sample(others, k - 1)
    chosen = [gold, *others]
    rng.shuffle(chosen)
    return [document.chunk(i) for i in chosen], chosen.index(gold)


def qa_item(
    generate: Generate,
    document: LongDocument,
    doc_index: int,
    item: str,
    seed: int,
    want_qa: bool,
    want_rag: bool,
    rag_k: int | None,
) -> ItemResult:
    """Ask for a question about a random chunk; build the QA and/or RAG example from the pair."""
    gold = item_rng(seed, item, "chunk").randrange(document.num_chunks)
    reply = generate([prompts.QA_GENERATION.format(snippet=document.chunk(gold))])[0]
    pair = parse_qa(reply)
    if pair is None:
        return ItemResult(malformed="reply has no 'Question:' followed by 'Answer:'", calls=1)
    origin = {"doc": doc_index, "gold_chunk": gold}
    examples = []
    if want_qa:
        user = prompts.qa_instruction(item_rng(seed, item, "qa"), document.text, pair.question)
        examples.append(conversation("qa", item, user, pair.answer, **origin))
    if want_rag:
        rng = item_rng(seed, item, "rag")
        passages, gold_position = rag_passages(document, gold, rag_k, rng)
        user = prompts.rag_instruction(rng, passages, pair.question)
        examples.append(conversation("rag", item, user, pair.answer, **origin, gold_passage=gold_position))
    return ItemResult(examples=examples, calls=1)


# ---------------------------------------------------------------------------------- summarization
def group_for_merge(lengths: list[int], budget: int) -> list[list[int]]:
    """Consecutive groups of summaries to merge: filled up to `budget` tokens, but always at least two
    per group (a leftover single joins the group before it), so every level at least halves the count
    and recursion ends after about log2(n) levels whatever the summaries' lengths."""
    if len(lengths) <= 1:
        return [list(range(len(lengths)))]
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, n in enumerate(lengths):
        if len(current) >= 2 and used + n > budget:
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if len(current) == 1:
        groups[-1].append(current[0])
    else:
        groups.append(current)
    return groups


def summarize_recursively(
    generate: Generate, chunks: list[str], count_tokens: Callable[[str], int], budget: int
) -> tuple[str, int, int]:
    """(whole-text summary, levels, generator calls): summarize each chunk, then merge consecutive
    summaries level by level until one is left. An empty summary at any level gives ''."""
    summaries = generate([prompts.SUMMARIZE_CHUNK.format(text=chunk) for chunk in chunks])
    calls, levels = len(chunks), 1
    while len(summaries) > 1:
        if not all(s.strip() for s in summaries):
            return "", levels, calls
        groups = group_for_merge([count_tokens(s) for s in summaries], budget)
        merged = [
            "\n\n".join(f"Summary of part {j + 1}:\n{summaries[i]}" for j, i in enumerate(group))
            for group in groups
        ]
        summaries = generate([prompts.SUMMARIZE_SUMMARIES.format(text=text) for text in merged])
        calls, levels = calls + len(merged), levels + 1
    return summaries[0].strip() if summaries else "", levels, calls


def summ_item(
    generate: Generate,
    document: LongDocument,
    doc_index: int,
    item: str,
    seed: int,
    count_tokens: Callable[[str], int],
    budget: int,
) -> ItemResult:
    """Summarize a whole (cut) book recursively; the example is the book + an instruction -> summary."""
    summary, levels, calls = summarize_recursively(generate, document.chunks, count_tokens, budget)
    if not summary:
        return ItemResult(malformed="empty summary", calls=calls)
    user = prompts.summ_instruction(item_rng(seed, item, "summ"), document.text)
    example = conversation("summ", item, user, summary, doc=doc_index, levels=levels)
    return ItemResult(examples=[example], calls=calls)
