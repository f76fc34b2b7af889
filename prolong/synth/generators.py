"""The instruct model that writes questions, answers and summaries, behind one small interface.

`Generator.generate(prompts, max_new_tokens)` takes user messages and returns the assistant replies.
Two implementations: a local Hugging Face checkpoint (chat template applied, greedy decoding) and an
OpenAI-compatible HTTP endpoint (`/v1/chat/completions`, e.g. a local vLLM server) through
prolong.chat_client, the client the LLM judge uses too.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Protocol

from prolong.chat_client import ChatClient
from prolong.config import SynthSpec
from prolong.errors import UserError


class GeneratorError(UserError):
    """The local generator cannot be used (not a checkpoint, no chat template). Endpoint failures are
    prolong.chat_client.ChatEndpointError."""


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

        from prolong.eval.engine import HFEngine, load_for_generation

        path = Path(path)
        if not (path / "config.json").is_file():
            raise GeneratorError(f"synth.generator: {path} is not a Hugging Face checkpoint (no config.json)")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # bfloat16 matmuls are slow on CPU; the checkpoint's own dtype is kept on GPU.
        model, tokenizer = load_for_generation(
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
class EndpointGenerator:
    """An OpenAI-compatible server through prolong's one chat client (retries, backoff, timeouts):
    one request per prompt, temperature 0."""

    def __init__(self, client: ChatClient) -> None:
        self.client = client

    @property
    def retries(self) -> int:
        """Retried requests so far (all threads): reported in the summary."""
        return self.client.retries

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """One request per prompt, in order."""
        return [self.client.complete(prompt, max_new_tokens) for prompt in prompts]


# ---------------------------------------------------------------------------------------- factory
def make_generator(spec: SynthSpec, backoff_s: float = 1.0) -> LocalGenerator | EndpointGenerator:
    """The generator a recipe's `synth` section names."""
    if spec.endpoint is not None:
        api_key = None
        if spec.api_key_env is not None:
            api_key = os.environ.get(spec.api_key_env)
            if not api_key:
                raise UserError(f"synth.api_key_env: environment variable {spec.api_key_env} is not set")
        client = ChatClient(
            spec.endpoint, spec.endpoint_model or "", api_key, spec.max_retries, spec.request_timeout_s, backoff_s
        )
        return EndpointGenerator(client)
    return LocalGenerator(spec.generator or "")
