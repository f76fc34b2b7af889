"""The whole pipeline with a tiny local model (its text is noise; the pipeline must still hold)."""

from __future__ import annotations

import json
from pathlib import Path

from prolong.synth.documents import load_documents
from prolong.synth.generators import LocalGenerator
from prolong.synth.pipeline import run_synth
from prolong.synth.tasks import summarize_recursively


def test_local_generator_replies_through_the_chat_template(model_dir: Path) -> None:
    generator = LocalGenerator(model_dir, device="cpu")
    prompt_ids = generator._prompt_ids("hello")
    assert prompt_ids[0] == generator.tokenizer.bos_token_id and prompt_ids.count(prompt_ids[0]) == 1
    replies = generator.generate(["Summarize: ka lo mi.", "Question?"], max_new_tokens=6)
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    assert replies == generator.generate(["Summarize: ka lo mi.", "Question?"], max_new_tokens=6)  # greedy


def test_recursive_summaries_with_the_local_model_at_several_sizes(make_recipe, model_dir: Path) -> None:
    from prolong.model.io import load_tokenizer

    generator = LocalGenerator(model_dir, device="cpu")
    recipe = make_recipe(chunk_tokens=64, min_doc_tokens=640)
    tokenizer = load_tokenizer(model_dir)
    chunks = load_documents(recipe, recipe.synth, tokenizer)[0].chunks
    assert len(chunks) >= 9
    for n in (1, 2, 3, 9):
        _, levels, calls = summarize_recursively(
            lambda ps: generator.generate(ps, 2), chunks[:n], lambda s: len(tokenizer(s)["input_ids"]), 64
        )
        assert levels <= 1 + (n - 1).bit_length() and calls <= 2 * n - 1


def test_pipeline_with_the_local_model(make_recipe) -> None:
    recipe = make_recipe(num_examples=10, max_doc_tokens=512, chunk_tokens=256, max_new_tokens=4)
    report = run_synth(recipe, show_progress=False)
    assert report.planned == 4 + 3  # 4 QA pairs (RAG reuses 3 of them) + 3 books
    assert report.finished == 7 and report.resumed == 0
    # Noise never has "Question:/Answer:": every pair is counted and skipped, summaries still come out.
    assert report.malformed["pair"] == 4
    assert report.examples["qa"] == report.examples["rag"] == 0
    ok_summaries = 3 - report.malformed["summ"]
    assert report.examples["summ"] == ok_summaries
    rows = [json.loads(line) for line in Path(recipe.synth.output).read_text().splitlines()]
    assert len(rows) == ok_summaries
    for row in rows:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"] and row["task"] == "summ"
    again = run_synth(recipe, show_progress=False)  # everything recorded: nothing to do
    assert again.resumed == 7 and again.finished == 0 and again.calls == 0
