"""Against a small OpenAI-compatible server on 127.0.0.1: real HTTP round trips with canned replies,
HTTP errors and their retries (Retry-After honoured), a slow server, a server that stays down, the
LLM judge through the same client, and an interrupted synthesis run that resumes."""

from __future__ import annotations

import email.utils
import json
import socket
import time
from pathlib import Path

import pytest

from prolong.chat_client import ChatClient, ChatEndpointError, chat_completions_url, retry_after_s
from prolong.eval.judge import OpenAIJudge
from prolong.synth.generators import EndpointGenerator, make_generator
from prolong.synth.pipeline import run_synth


def _rows(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_round_trip_with_one_error_and_a_retry(chat_server) -> None:
    generator = EndpointGenerator(ChatClient(chat_server.url, "tiny", max_retries=2, backoff_s=0.01))
    chat_server.fail_next = 1
    prompt = "Summarize.\n***\nalpha beta gamma"
    assert generator.generate([prompt], 16) == ["Summary: alpha beta gamma"]
    assert chat_server.failures == 1 and generator.retries == 1 and chat_server.prompts == [prompt]


def test_server_down_is_reported_after_the_retries(chat_server) -> None:
    generator = EndpointGenerator(ChatClient(chat_server.url, "tiny", max_retries=2, backoff_s=0.01))
    chat_server.fail_next = 10
    with pytest.raises(ChatEndpointError, match=r"failed 3 times \(last: HTTP 500.*internal error \(canned\)"):
        generator.generate(["x"], 4)
    assert chat_server.failures == 3
    wrong_model = EndpointGenerator(ChatClient(chat_server.url, "other", max_retries=5, backoff_s=0.01))
    with pytest.raises(ChatEndpointError, match=r"request for model 'other' \(HTTP 404.*not retried"):
        wrong_model.generate(["x"], 4)


@pytest.mark.parametrize("status", [408, 409, 425, 429, 502, 503, 504])
def test_every_retryable_status_is_retried(chat_server, status) -> None:
    client = ChatClient(chat_server.url, "tiny", max_retries=3, backoff_s=0.01)
    chat_server.fail_next, chat_server.fail_status = 2, status
    assert client.complete("Summarize.\n***\none", 8) == "Summary: one"
    assert client.retries == 2 and chat_server.failures == 2


@pytest.mark.parametrize("status", [400, 401, 403, 422])
def test_client_errors_are_not_retried(chat_server, status) -> None:
    client = ChatClient(chat_server.url, "tiny", max_retries=3, backoff_s=0.01)
    chat_server.fail_next, chat_server.fail_status = 5, status
    with pytest.raises(ChatEndpointError, match=f"refused the request .*HTTP {status}.*not retried"):
        client.complete("x", 8)
    assert chat_server.failures == 1 and client.retries == 0


def test_retry_after_is_honoured_over_the_backoff(chat_server) -> None:
    # A backoff of 30 s would time the test out; the server's "Retry-After: 0" says retry at once.
    client = ChatClient(chat_server.url, "tiny", max_retries=1, backoff_s=30.0)
    chat_server.fail_next, chat_server.fail_status, chat_server.retry_after = 1, 429, "0"
    began = time.monotonic()
    assert client.complete("Summarize.\n***\nsoon", 8) == "Summary: soon"
    assert time.monotonic() - began < 10 and client.retries == 1
    assert retry_after_s("7") == 7.0 and retry_after_s("soon") is None and retry_after_s(None) is None
    in_20s = email.utils.formatdate(time.time() + 20, usegmt=True)
    assert 15 < retry_after_s(in_20s) <= 20  # type: ignore[operator]
    assert ChatClient("http://h", "m", max_backoff_s=5)._delay(1, 3600.0) == 5  # capped


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    client = ChatClient("http://h", "m", backoff_s=1.0, max_backoff_s=10.0)
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (6, 10.0)]:
        delays = [client._delay(attempt, None) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays) and len(set(delays)) > 1


def test_timeouts_and_refused_connections_are_retried_then_reported(chat_server) -> None:
    chat_server.delay_s = 1.0
    client = ChatClient(chat_server.url, "tiny", max_retries=1, timeout_s=0.2, backoff_s=0.01)
    with pytest.raises(ChatEndpointError, match=r"failed 2 times \(last: .*timed out"):
        client.complete("x", 4)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = ChatClient(f"http://127.0.0.1:{port}", "tiny", max_retries=2, backoff_s=0.01)
    with pytest.raises(ChatEndpointError, match=rf"127\.0\.0\.1:{port}/v1/chat/completions failed 3 times.*refused"):
        client.complete("x", 4)
    assert client.retries == 2


def test_judge_through_the_same_client_with_a_retry(chat_server) -> None:
    judge = OpenAIJudge(chat_server.url, "tiny", backoff_s=0.01)
    chat_server.fail_next = 1
    assert judge.score_qa("Who?", ["Anna"], "Anna did.") == {
        "judge_fluency": 1.0,
        "judge_correctness": 2 / 3,
        "judge_score": 2 / 3,
    }
    assert judge.client.retries == 1
    summary = judge.score_summary("ref", ["a", "b", "c", "d"], "One. Two. Three.")
    # key points: supported, not, supported, not -> recall 1/2; sentences: yes, no, yes -> precision 2/3
    assert summary["judge_recall"] == 0.5 and summary["judge_precision"] == 2 / 3
    assert summary["judge_f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    chat_server.fail_next = 10
    down = OpenAIJudge(chat_server.url, "tiny", max_retries=1, backoff_s=0.01)
    with pytest.raises(ChatEndpointError, match="failed 2 times"):
        down.score_qa("Who?", ["Anna"], "Anna did.")


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

    from prolong.model.io import load_tokenizer
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
    endpoint = make_generator(recipe.synth)
    calls: list[list[str]] = []

    class CtrlCOnTheFourthItem:
        """The endpoint generator, with Ctrl-C pressed while the 4th item is being generated (raised in
        the main thread itself: a simulated signal from the server thread could land late on a loaded CPU)."""

        def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
            calls.append(prompts)
            if len(calls) == interrupt_at:
                raise KeyboardInterrupt
            return endpoint.generate(prompts, max_new_tokens)

    with pytest.raises(KeyboardInterrupt):
        run_synth(recipe, show_progress=False, generator=CtrlCOnTheFourthItem())
    journal = Path(recipe.synth.output + ".journal").read_text().splitlines()[1:]
    first_run = {json.loads(line)["item"] for line in journal}
    assert 0 < len(first_run) < 6 and len(first_run) >= interrupt_at - 1
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
