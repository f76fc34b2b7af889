"""Chunking, RAG passage lists, recursive summarization's termination, planning and the journal."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prolong.synth.documents import LongDocument, cut_document
from prolong.synth.pipeline import plan_items, task_counts
from prolong.synth.store import SynthStore, journal_path
from prolong.synth.tasks import group_for_merge, rag_passages, summarize_recursively


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    from prolong.model.io import load_tokenizer

    return load_tokenizer(model_dir)


def test_cut_document_chunks_tile_the_cut_text(corpus: Path, tokenizer) -> None:
    text = json.loads((corpus / "books.jsonl").read_text().splitlines()[0])["text"]
    total = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    for max_tokens, chunk in [(1000, 128), (total + 10, 300), (64, 64), (500, 1000)]:
        doc = cut_document(text, tokenizer, max_tokens, chunk)
        assert doc.num_tokens == min(total, max_tokens)
        assert "".join(doc.chunks) == doc.text and text.startswith(doc.text)
        lengths = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in doc.chunks]
        # Re-tokenizing a slice may merge a token or two differently at its edges.
        assert all(abs(n - chunk) <= 3 for n in lengths[:-1])
        assert lengths[-1] <= 1.5 * chunk + 3
        full, tail = divmod(doc.num_tokens, chunk)
        expected = full + (1 if tail >= chunk / 2 or full == 0 else 0)  # a short tail joins the last chunk
        assert doc.num_chunks == expected
    assert cut_document("", tokenizer, 100, 10).num_chunks == 0


@given(
    n_chunks=st.integers(1, 40),
    gold=st.integers(0, 39),
    k=st.one_of(st.none(), st.integers(1, 50)),
    seed=st.integers(0, 2**32),
)
def test_rag_passages_contain_the_gold_chunk(n_chunks: int, gold: int, k: int | None, seed: int) -> None:
    gold %= n_chunks
    text = "".join(f"<chunk {i}>" for i in range(n_chunks))
    bounds = [text.index(f"<chunk {i}>") for i in range(n_chunks)] + [len(text)]
    doc = LongDocument(text=text, num_tokens=n_chunks, bounds=tuple(bounds))
    passages, position = rag_passages(doc, gold, k, random.Random(seed))
    assert passages[position] == f"<chunk {gold}>"
    assert len(passages) == (n_chunks if k is None else min(k, n_chunks))
    assert len(set(passages)) == len(passages)


@given(st.lists(st.integers(0, 5000), min_size=2, max_size=200), st.integers(1, 4000))
def test_merge_groups_at_least_halve(lengths: list[int], budget: int) -> None:
    groups = group_for_merge(lengths, budget)
    assert [i for g in groups for i in g] == list(range(len(lengths)))  # consecutive, all covered
    assert all(len(g) >= 2 for g in groups)
    assert len(groups) <= len(lengths) // 2
    # Past its first two members a group stays within budget (a leftover single may join the last one).
    assert all(len(g) <= 3 or sum(lengths[i] for i in g[:-1]) <= budget for g in groups)


@settings(max_examples=60, deadline=None)
@given(n_chunks=st.integers(1, 300), growth=st.integers(1, 5), budget=st.integers(1, 2000))
def test_recursive_summarization_terminates_on_any_length(n_chunks: int, growth: int, budget: int) -> None:
    """Even a "summarizer" whose output is longer than its input ends with one summary in about
    log2(n) levels."""
    calls = []

    def verbose(prompts: list[str]) -> list[str]:
        calls.append(len(prompts))
        return [p[-200:] * growth for p in prompts]

    summary, levels, n_calls = summarize_recursively(
        verbose, [f"chunk {i} " * 5 for i in range(n_chunks)], len, budget
    )
    assert summary
    assert levels <= 1 + math.ceil(math.log2(n_chunks)) if n_chunks > 1 else levels == 1
    assert n_calls == sum(calls) < 2 * n_chunks


def test_empty_summary_stops_early() -> None:
    summary, levels, _ = summarize_recursively(lambda ps: ["" for _ in ps], ["a", "b", "c"], len, 10)
    assert summary == "" and levels == 1


def test_task_counts_and_plan() -> None:
    assert task_counts(10, {"qa": 0.4, "rag": 0.3, "summ": 0.3}) == {"qa": 4, "rag": 3, "summ": 3}
    assert sum(task_counts(7, {"qa": 0.4, "rag": 0.3, "summ": 0.3}).values()) == 7
    assert task_counts(5, {"summ": 1.0}) == {"qa": 0, "rag": 0, "summ": 5}
    items = plan_items({"qa": 4, "rag": 3, "summ": 3})
    assert sorted(items) == [f"pair/{k:06d}" for k in range(4)] + [f"summ/{j:06d}" for j in range(3)]
    assert items[:2] == ["pair/000000", "summ/000000"]  # interleaved
    assert plan_items({"qa": 0, "rag": 2, "summ": 0}) == ["pair/000000", "pair/000001"]


def test_store_recovers_from_a_torn_write(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    store = SynthStore(output, {"seed": 1})
    store.commit("pair/000000", [{"item": "pair/000000", "task": "qa"}], "ok")
    store.commit("pair/000001", [], "malformed")
    store.close()
    # A crash after writing an item's examples but before its journal line, then mid-way into a line:
    with open(output, "a") as file:
        file.write(json.dumps({"item": "pair/000002", "task": "qa"}) + "\n" + '{"item": "pair/0000')
    with open(journal_path(output), "a") as file:
        file.write('{"item": "pair/00')
    store = SynthStore(output, {"seed": 1})
    assert set(store.done) == {"pair/000000", "pair/000001"}
    assert [json.loads(line)["item"] for line in output.read_text().splitlines()] == ["pair/000000"]
    store.commit("pair/000002", [{"item": "pair/000002", "task": "rag"}], "ok")
    store.close()
    lines = journal_path(output).read_text().splitlines()
    assert [json.loads(line).get("item") for line in lines] == [
        None,
        "pair/000000",
        "pair/000001",
        "pair/000002",
    ]
    with pytest.raises(ValueError, match="other synth settings"):
        SynthStore(output, {"seed": 2})
    journal_path(output).unlink()
    with pytest.raises(ValueError, match="has no journal"):
        SynthStore(output, {"seed": 1})
