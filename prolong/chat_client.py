"""The one client of OpenAI-compatible chat endpoints (`/v1/chat/completions`: vLLM, TGI, OpenAI, ...).

Used by synthetic-data generation (prolong.synth.generators) and the LLM judge (prolong.eval.judge).
Plain urllib rather than the `openai` package: one POST and its JSON reply are all either needs, the
retry policy below is ours to test against a real local server, and synthesis and judging then work
without an optional extra (or a second code path for when it is missing).

Retries: a request is retried with exponential backoff (with jitter, capped) when the connection fails,
times out, or the server answers 408, 409, 425, 429 or 5xx; a Retry-After header (seconds or an HTTP
date) is honoured, within the cap. Other statuses (400 bad request, 401/403 auth, 404 wrong URL or
model) will not get better by asking again and fail at once. The final error names the URL, the model,
the number of attempts and the last answer.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import random
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from prolong.errors import UserError

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class ChatEndpointError(UserError):
    """The endpoint gave no usable reply: refused the request, or failed after every retry."""


def chat_completions_url(endpoint: str) -> str:
    """The chat completions URL of a base URL given with or without `/v1` (or already complete)."""
    base = endpoint.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if base.endswith("/v1"):
        return f"{base}/chat/completions"
    return f"{base}/v1/chat/completions"


def retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class ChatClient:
    """Chat completions from one endpoint and model; safe to share between threads."""

    def __init__(
        self,
        endpoint: str,
        model: str,
        api_key: str | None = None,
        max_retries: int = 5,
        timeout_s: float = 600.0,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
    ) -> None:
        self.url = chat_completions_url(endpoint)
        self.model = model
        self.api_key = api_key
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.retries = 0  # retried requests so far, all threads together (reported by callers)
        self._lock = threading.Lock()

    def complete(self, prompt: str, max_tokens: int, temperature: float = 0.0) -> str:
        """The reply to one user message (stripped); ChatEndpointError when there is none."""
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens,
                "temperature": temperature,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last_error = ""
        wait: float | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._lock:
                    self.retries += 1
                time.sleep(self._delay(attempt, wait))
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    payload = json.loads(response.read().decode("utf-8"))
                return _reply_text(payload, self.url)
            except urllib.error.HTTPError as error:
                detail = error.read().decode("utf-8", "replace")[:300]
                last_error = f"HTTP {error.code} {error.reason}: {detail}"
                if error.code not in RETRYABLE_STATUSES:
                    raise ChatEndpointError(
                        f"{self.url} refused the request for model {self.model!r} ({last_error}); not retried"
                    ) from None
                wait = retry_after_s(error.headers.get("Retry-After") if error.headers else None)
            except (urllib.error.URLError, http.client.HTTPException, OSError, json.JSONDecodeError) as error:
                last_error = f"{type(error).__name__}: {getattr(error, 'reason', error)}"
                wait = None
        raise ChatEndpointError(
            f"{self.url} failed {self.max_retries + 1} times (last: {last_error}); is the server up and "
            f"serving model {self.model!r}?"
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before retry `attempt` (1, 2, ...): the server's Retry-After, else exponential backoff
        with jitter (so threads that failed together do not retry together), both capped."""
        if retry_after is not None:
            return min(retry_after, self.max_backoff_s)
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s) * random.uniform(0.5, 1.0)


def _reply_text(payload: Any, url: str) -> str:
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ChatEndpointError(
            f"{url} answered without choices[0].message.content: {str(payload)[:300]}"
        ) from None
    return (content or "").strip()
