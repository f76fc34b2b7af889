"""Against a small OpenAI-compatible server on 127.0.0.1: real HTTP round trips with canned replies,
an HTTP 500 and its retry, a server that stays down, and an interrupted run that resumes."""

from __future__ import annotations

import _thread
import json
from pathlib import Path

import pytest

from prolong.synth.generators import EndpointGenerator, GeneratorError, chat_completions_url, make_generator
from prolong.synth.pipeline import run_synth


def _rows(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_round_trip_with_one_error_and_a_retry(chat_server) -> None:
    generator = EndpointGenerator(chat_server.url, "tiny", max_retries=2, backoff_s=0.01)
    chat_server.fail_next = 1
    prompt = "Summarize.\n***\nalpha beta gamma"
    assert generator.generate([prompt], 16) == ["Summary: alpha beta gamma"]
    assert chat_server.failures == 1 and generator.retries == 1 and chat_server.prompts == [prompt]


def test_server_down_is_reported_after_the_retries(chat_server) -> None:
    generator = EndpointGenerator(chat_server.url, "tiny", max_retries=2, backoff_s=0.01)
    chat_server.fail_next = 10
    with pytest.raises(GeneratorError, match=r"failed 3 times \(last: HTTP 500.*internal error \(canned\)"):
        generator.generate(["x"], 4)
    assert chat_server.failures == 3
    wrong_model = EndpointGenerator(chat_server.url, "other", max_retries=5, backoff_s=0.01)
    with pytest.raises(GeneratorError, match="HTTP 404.*not retried"):
        wrong_model.generate(["x"], 4)


def test_urls() -> None:
    assert chat_completions_url("http://h:8000/v1") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h:8000/") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"


def test_pipeline_through_the_endpoint(make_recipe, chat_server) -> None:
    recipe = make_recipe(endpoint=chat_server.url, endpoint_model="tiny", num_examples=20, max_new_tokens=64)
    chat_server.fail_next = 1  # the first request fails once and is retried
    generator = make_generator(recipe.synth, backoff_s=0.01)
    report = run_synth(recipe, generator=generator, workers=3, show_progress=False)
    assert report.retries == 1 and report.planned == 8 + 6
    assert report.finished == 14
    rows = _rows(recipe.synth.output)
    n_malformed = report.malformed["pair"]
    assert 0 < n_malformed < 8  # the canned server refuses about a quarter of the snippets
    assert report.examples == {
        "qa": 8 - n_malformed,
        "rag": sum(1 for r in rows if r["task"] == "rag"),
        "summ": 6 - report.malformed["summ"],
    }
    assert report.examples["summ"] == 6

    from prolong.data.tokenize import load_tokenizer
    from prolong.synth.documents import load_documents

    pool = load_documents(recipe, recipe.synth, load_tokenizer(recipe.model.path))
    layouts = set()
    for row in rows:
        user, assistant = (m["content"] for m in row["messages"])
        doc = pool[row["doc"]]
        if row["task"] in ("qa", "rag"):
            gold = doc.chunk(row["gold_chunk"])
            quote = " ".join(gold.split()[:8])
            assert assistant == f"As the book says, '{quote}'."  # the answer of the pair about this chunk
            assert "What does the book say first here?" in user
        if row["task"] == "qa":
            assert doc.text in user  # the WHOLE (cut) document
        elif row["task"] == "rag":
            assert gold.strip() in user  # the gold chunk is among the passages
            assert doc.text not in user or doc.num_chunks == 1  # shuffled, not the document as is
            layouts.add(user.split("\n")[0])
        else:
            assert doc.text in user and assistant.startswith("Summary:")
            assert 1 <= row["levels"] <= 1 + (doc.num_chunks - 1).bit_length()
    assert len(layouts) > 1  # several phrasings sampled


def test_interrupted_run_resumes_without_regenerating(make_recipe, chat_server) -> None:
    recipe = make_recipe(
        endpoint=chat_server.url,
        endpoint_model="tiny",
        num_examples=12,
        task_shares={"qa": 0.5, "rag": 0.5},
        max_new_tokens=64,
    )
    interrupt_at = 4

    def ctrl_c(prompt: str) -> None:
        if len(chat_server.prompts) == interrupt_at:
            _thread.interrupt_main()  # as if Ctrl-C was pressed while the 4th item was being generated

    chat_server.on_request = ctrl_c
    with pytest.raises(KeyboardInterrupt):
        run_synth(recipe, show_progress=False)
    journal = Path(recipe.synth.output + ".journal").read_text().splitlines()[1:]
    first_run = {json.loads(line)["item"] for line in journal}
    assert 0 < len(first_run) < 6 and len(first_run) >= interrupt_at - 1
    chat_server.on_request = None
    chat_server.prompts.clear()

    report = run_synth(recipe, show_progress=False)
    assert report.resumed == len(first_run) and report.finished == 6 - len(first_run)
    assert len(chat_server.prompts) == report.finished  # one request per pair: none regenerated
    records = [
        json.loads(line) for line in Path(recipe.synth.output + ".journal").read_text().splitlines()[1:]
    ]
    assert sorted(r["item"] for r in records) == [f"pair/{k:06d}" for k in range(6)]  # each recorded once
    ok = {r["item"] for r in records if r["status"] == "ok"}
    rows = _rows(recipe.synth.output)
    assert sorted((r["item"], r["task"]) for r in rows) == sorted((i, t) for i in ok for t in ("qa", "rag"))
