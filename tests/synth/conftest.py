"""Fixtures: a corpus of long documents and short chats, a tokenizer trained on it, a tiny random
Llama saved beside it, recipes naming them, and an OpenAI-compatible HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "den", "mar", "pol", "ther", "an", "is", "qu"]


def _words(rng: random.Random, n: int) -> str:
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(n)]
    sentences = [" ".join(words[i : i + 12]).capitalize() + "." for i in range(0, n, 12)]
    return " ".join(sentences)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """books.jsonl (long documents of 60 to 2400 words) and chat.jsonl (short conversations)."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    books = [{"text": _words(rng, n)} for n in (2400, 60, 900, 1500, 300, 2000, 700, 1200)]
    write_jsonl(root / "books.jsonl", books)
    chats = [
        {
            "messages": [
                {"role": "user", "content": _words(rng, rng.randint(5, 30))},
                {"role": "assistant", "content": _words(rng, rng.randint(10, 60))},
            ]
        }
        for _ in range(300)
    ]
    write_jsonl(root / "chat.jsonl", chats)
    return root


@pytest.fixture(scope="session")
def model_dir(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE (chat template included) trained on the corpus, and a tiny random
    LlamaForCausalLM saved beside it: an "instruct model" whose text is noise."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from prolong.data.tokenizer_train import train_tokenizer

    path = tmp_path_factory.mktemp("tiny-instruct")
    texts = [json.loads(line)["text"] for line in (corpus / "books.jsonl").read_text().splitlines()]
    tokenizer_path = train_tokenizer(texts, path, vocab_size=400, name="tiny-instruct")
    from prolong.model.io import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture
def make_recipe(corpus: Path, model_dir: Path, tmp_path: Path) -> Callable[..., Any]:
    """A validated recipe: books (long), chat and synth (sft) domains, an SFT stage mixing them, and a
    `synth` section (local tiny model unless overridden)."""
    from prolong.config import recipe_from_dict

    def make(synth_share: float = 0.03, **synth: Any) -> Any:
        section = {
            "source_domains": ["books"],
            "output": str(tmp_path / "synth.jsonl"),
            "generator": str(model_dir),
            "num_examples": 10,
            "max_doc_tokens": 1024,
            "min_doc_tokens": 256,
            "chunk_tokens": 128,
            "max_new_tokens": 8,
            **synth,
        }
        if "endpoint" in synth:
            section.pop("generator")
        mixture = [{"domain": "chat", "proportion": 1 - synth_share}]
        if synth_share:
            mixture.append({"domain": "synth", "proportion": synth_share})
        return recipe_from_dict(
            {
                "name": "synth-test",
                "seed": 7,
                "output_dir": str(tmp_path / "run"),
                "model": {"path": str(model_dir), "dtype": "float32"},
                "data": {
                    "shard_dir": str(tmp_path / "shards"),
                    "domains": [
                        {
                            "name": "books",
                            "kind": "long",
                            "sources": [{"type": "jsonl", "path": str(corpus / "books.jsonl")}],
                        },
                        {
                            "name": "chat",
                            "kind": "sft",
                            "sources": [{"type": "jsonl", "path": str(corpus / "chat.jsonl")}],
                        },
                        {
                            "name": "synth",
                            "kind": "sft",
                            "sources": [{"type": "jsonl", "path": section["output"]}],
                        },
                    ],
                },
                "stages": [
                    {
                        "name": "sft",
                        "kind": "sft",
                        "seq_len": 4096,
                        "tokens_per_step": 4096,
                        "steps": 1,
                        "lr": 1e-5,
                        "min_lr": 1e-6,
                        "mixture": mixture,
                    }
                ],
                "synth": section,
            }
        )

    return make


# ------------------------------------------------------------------------- OpenAI-compatible server
def canned_reply(prompt: str) -> str:
    """The server's answer: a well-formed QA pair quoting the snippet (malformed for about a quarter of
    snippets, chosen by a hash), a summary quoting the start of the text to summarize, or for the LLM
    judge's prompts a verdict (QA: fluency 1, correctness 2; key points and sentences: alternately
    supported, the first one supported)."""
    if "Reply with JSON only" in prompt:
        if '"fluency"' in prompt:
            return 'Verdict: {"fluency": 1, "correctness": 2}'
        listed = [line for line in prompt.splitlines() if line[:1].isdigit() and ". " in line]
        return json.dumps({"supported": [i % 2 == 0 for i in range(len(listed))]})
    if "*** Start of the snippet ***" in prompt:
        snippet = (
            prompt.split("*** Start of the snippet ***")[1].split("*** End of the snippet ***")[0].strip()
        )
        if zlib.crc32(snippet.encode()) % 4 == 0:
            return "I would rather not answer that."
        quote = " ".join(snippet.split()[:8])
        return f"Reasoning: this snippet is about {quote[:20]}.\nQuestion: What does the book say first here?\nAnswer: As the book says, '{quote}'."
    words = prompt.split("***")[-1].split() if "***" in prompt else prompt.split()[-40:]
    return "Summary: " + " ".join(words[:30])


class ChatServer:
    """A small OpenAI-compatible /v1/chat/completions server in a thread; counts what it was asked."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.fail_next = 0  # answer this many requests with `fail_status`
        self.fail_status = 500
        self.retry_after: str | None = None  # Retry-After header of the failures
        self.delay_s = 0.0  # wait this long before answering (a slow server: client timeouts)
        self.failures = 0
        self.on_request: Callable[[str], None] | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                if self.path != "/v1/chat/completions" or body.get("model") != "tiny":
                    self._send(404, {"error": {"message": f"no route {self.path} for {body.get('model')}"}})
                    return
                if server.delay_s:
                    time.sleep(server.delay_s)
                if server.fail_next > 0:
                    server.fail_next -= 1
                    server.failures += 1
                    headers = {"Retry-After": server.retry_after} if server.retry_after else {}
                    self._send(server.fail_status, {"error": {"message": "internal error (canned)"}}, headers)
                    return
                server.prompts.append(prompt)
                if server.on_request is not None:
                    server.on_request(prompt)
                reply = canned_reply(prompt)
                self._send(
                    200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]}
                )

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def qa_prompts(self) -> list[str]:
        return [p for p in self.prompts if "*** Start of the snippet ***" in p]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    server = ChatServer()
    yield server
    server.close()
