"""The instruct model that writes questions, answers and summaries, behind one small interface.

`Generator.generate(prompts, max_new_tokens)` takes user messages and returns the assistant replies.
Two implementations: a local Hugging Face checkpoint (chat template applied, greedy decoding) and an
OpenAI-compatible HTTP endpoint (`/v1/chat/completions`, e.g. a local vLLM server).
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from prolong.config import SynthSpec
from prolong.errors import UserError

# HTTP statuses worth retrying: the server is busy, restarting or timed out. Others (400 bad request,
# 401/403 auth, 404 wrong URL or model) will not get better by asking again.
_RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}


class GeneratorError(UserError):
    """The generator could not produce a reply (endpoint down after retries, bad model path, ...)."""


class Generator(Protocol):
    """Anything that turns user prompts into assistant replies."""

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """One reply per prompt, in order."""
        ...


# ------------------------------------------------------------------------------------ local model
class LocalGenerator:
    """A local HF instruct checkpoint through the project's engine (chunked prefill, greedy, batched):
    each prompt is a user turn rendered with the checkpoint's own chat template.

    Calls are serialised with a lock (one model, many worker threads); torch already uses the cores.
    """

    def __init__(self, path: str | Path, device: str | None = None, trust_remote_code: bool = False) -> None:
        import torch

        from prolong.eval.engine import HFEngine, load_model

        path = Path(path)
        if not (path / "config.json").is_file():
            raise GeneratorError(f"synth.generator: {path} is not a Hugging Face checkpoint (no config.json)")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # bfloat16 matmuls are slow on CPU; the checkpoint's own dtype is kept on GPU.
        model, tokenizer = load_model(
            str(path), "float32" if device == "cpu" else "auto", device, trust_remote_code
        )
        if not tokenizer.chat_template:
            raise GeneratorError(
                f"synth.generator: the tokenizer of {path} has no chat template; use an instruct checkpoint"
            )
        self.tokenizer = tokenizer
        self.engine = HFEngine(model, tokenizer)
        self._lock = threading.Lock()

    def _prompt_ids(self, prompt: str) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        # The template writes BOS itself where the model wants one; encoding must not add a second.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy replies; prompts of similar length are decoded together."""
        with self._lock:
            generations = self.engine.generate([self._prompt_ids(p) for p in prompts], max_new_tokens)
        return [g.text.strip() for g in generations]


# ------------------------------------------------------------------------------ HTTP endpoint
def chat_completions_url(endpoint: str) -> str:
    """The chat completions URL of a base URL given with or without `/v1` (or already complete)."""
    base = endpoint.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if base.endswith("/v1"):
        return f"{base}/chat/completions"
    return f"{base}/v1/chat/completions"


class EndpointGenerator:
    """An OpenAI-compatible server: one POST per prompt, temperature 0, retried with exponential backoff."""

    def __init__(
        self,
        endpoint: str,
        model: str,
        api_key: str | None = None,
        max_retries: int = 5,
        timeout_s: float = 600.0,
        backoff_s: float = 1.0,
    ) -> None:
        self.url = chat_completions_url(endpoint)
        self.model = model
        self.api_key = api_key
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.retries = 0  # retried requests so far (all threads): reported in the summary
        self._lock = threading.Lock()

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """One request per prompt, in order."""
        return [self._complete(prompt, max_new_tokens) for prompt in prompts]

    def _complete(self, prompt: str, max_new_tokens: int) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_new_tokens,
                "temperature": 0.0,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._lock:
                    self.retries += 1
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    payload = json.loads(response.read().decode("utf-8"))
                return _reply_text(payload, self.url)
            except urllib.error.HTTPError as error:
                detail = error.read().decode("utf-8", "replace")[:300]
                last_error = f"HTTP {error.code} {error.reason}: {detail}"
                if error.code not in _RETRYABLE:
                    raise GeneratorError(
                        f"{self.url} refused the request ({last_error}); not retried"
                    ) from None
            except (urllib.error.URLError, http.client.HTTPException, OSError, json.JSONDecodeError) as error:
                last_error = f"{type(error).__name__}: {getattr(error, 'reason', error)}"
        raise GeneratorError(
            f"{self.url} failed {self.max_retries + 1} times (last: {last_error}); is the server up and "
            f"serving model {self.model!r}?"
        )


def _reply_text(payload: Any, url: str) -> str:
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise GeneratorError(
            f"{url} answered without choices[0].message.content: {str(payload)[:300]}"
        ) from None
    return (content or "").strip()


# ---------------------------------------------------------------------------------------- factory
def make_generator(spec: SynthSpec, backoff_s: float = 1.0) -> LocalGenerator | EndpointGenerator:
    """The generator a recipe's `synth` section names."""
    if spec.endpoint is not None:
        api_key = None
        if spec.api_key_env is not None:
            api_key = os.environ.get(spec.api_key_env)
            if not api_key:
                raise UserError(f"synth.api_key_env: environment variable {spec.api_key_env} is not set")
        return EndpointGenerator(
            spec.endpoint,
            spec.endpoint_model or "",
            api_key,
            spec.max_retries,
            spec.request_timeout_s,
            backoff_s,
        )
    return LocalGenerator(spec.generator or "")
