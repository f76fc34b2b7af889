"""Greedy generation engines: HF model with chunked prefill into a KV cache (batched), and vLLM on GPU.

Plain `model.generate` runs the whole prompt through the model in one forward, so activation memory grows
with the prompt (MLP intermediates alone are T x intermediate per layer). Chunked prefill feeds the prompt
in blocks of `prefill_chunk` tokens into a DynamicCache and keeps only the last position's logits, so peak
memory is the KV cache plus one block's activations.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from prolong.model.attention import register_attention, use_attention


@dataclass
class Generation:
    """One decoded continuation."""

    text: str
    num_tokens: int


class Engine(Protocol):
    """Anything that turns token-id prompts into greedy continuations."""

    tokenizer: Any

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_newline: bool = False,
                 on_done: Callable[[int], None] | None = None) -> list[Generation]: ...


def load_for_generation(model_dir: str, dtype: str = "auto", device: str | None = None,
                        trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) of a local HF directory for decoding, through prolong.model.io's loaders (local
    files and safetensors only, remote code only when asked for): SDPA attention (HFEngine switches
    single prompts to chunked prefill), eval mode, on `device` (default: CUDA when present)."""
    from prolong.model.io import load_model, load_tokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(model_dir, dtype, attn_implementation="sdpa", trust_remote_code=trust_remote_code,
                       device=device)
    return model.eval(), load_tokenizer(model_dir, trust_remote_code)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        ids |= set(value) if isinstance(value, (list, tuple)) else ({value} if value is not None else set())
    return ids


def cache_keyword(model: Any) -> str:
    """The forward keyword that takes a KV cache: `cache` in recent transformers 5.x, which deprecated
    `past_key_values` (to be removed in 5.40), else `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class HFEngine:
    """Greedy decoding with chunked prefill; prompts of similar length share a left-padded batch."""

    def __init__(self, model: Any, tokenizer: Any, prefill_chunk: int = 2048, max_batch_tokens: int = 32768,
                 max_batch_size: int = 32, max_padding: float = 0.1) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.prefill_chunk, self.max_batch_tokens = prefill_chunk, max_batch_tokens
        self.max_batch_size, self.max_padding = max_batch_size, max_padding
        self.eos_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._cache_keyword = cache_keyword(model)
        self._newline_ids: set[int] | None = None
        self._prompt_attention = register_attention()  # prolong's adapter: mask-free chunked prefill

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def newline_ids(self) -> set[int]:
        """Token ids whose text holds a newline (computed once; used by stop-at-newline tasks)."""
        if self._newline_ids is None:
            vocab = self.tokenizer.get_vocab()
            self._newline_ids = {i for i in vocab.values() if "\n" in self.tokenizer.decode([i])}
        return self._newline_ids

    def batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Prompt indices grouped longest first, within the token budget and the padding allowance."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        groups: list[list[int]] = []
        for i in order:
            group = groups[-1] if groups else None
            if group is not None:
                longest = lengths[group[0]]
                size = len(group) + 1
                if (size <= self.max_batch_size and size * longest <= self.max_batch_tokens
                        and lengths[i] >= (1 - self.max_padding) * longest):
                    group.append(i)
                    continue
            groups.append([i])
        return groups

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        kwargs = {"logits_to_keep": 1} if self._keeps_logits else {}
        kwargs[self._cache_keyword] = cache
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)
        return out.logits[:, -1, :]

    @torch.inference_mode()
    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        """Run left-padded prompts through the cache block by block: (last logits, cache, mask, positions)."""
        from transformers import DynamicCache

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
            mask[row, width - len(prompt):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = None
        for start in range(0, width, self.prefill_chunk):
            end = min(start + self.prefill_chunk, width)
            logits = self._forward(ids[:, start:end], mask[:, :end], positions[:, start:end], cache)
        assert logits is not None, "no prompt tokens"  # every prompt has at least its template
        return logits, cache, mask, positions[:, -1]

    def _attention_for(self, batch_size: int) -> contextlib.AbstractContextManager:
        """prolong's attention for one unpadded SDPA prompt (its dense path runs prompt chunks after the first
        mask-free, the window and soft-capping of the family included); padded batches keep masked SDPA."""
        if batch_size == 1 and self.model.config._attn_implementation == "sdpa":
            return use_attention(self.model, self._prompt_attention)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def _generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                        stop_newline: bool) -> list[Generation]:
        with self._attention_for(len(prompts)):
            return self._greedy(prompts, max_new_tokens, stop_newline)

    def _greedy(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_newline: bool) -> list[Generation]:
        logits, cache, mask, last_pos = self.prefill(prompts)
        stops = self.eos_ids | (self.newline_ids() if stop_newline else set())
        stop_tensor = torch.tensor(sorted(stops), device=self.device, dtype=torch.long)
        outputs: list[list[int]] = [[] for _ in prompts]
        done = torch.zeros(len(prompts), dtype=torch.bool, device=self.device)
        for step in range(max_new_tokens):
            next_ids = logits.argmax(-1)
            for row in (~done).nonzero().flatten().tolist():
                outputs[row].append(int(next_ids[row]))
            done |= torch.isin(next_ids, stop_tensor)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            last_pos = last_pos + 1
            logits = self._forward(next_ids[:, None], mask, last_pos[:, None], cache)
        return [self._decode(tokens, stop_newline) for tokens in outputs]

    def _decode(self, tokens: list[int], stop_newline: bool) -> Generation:
        if tokens and tokens[-1] in self.eos_ids:
            tokens = tokens[:-1]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if stop_newline and "\n" in text:
            # The newline token can carry text before it; keep that text, as a string stop would.
            text = text.split("\n", 1)[0]
        return Generation(text, len(tokens))

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_newline: bool = False,
                 on_done: Callable[[int], None] | None = None) -> list[Generation]:
        """Greedy continuations of token-id prompts, in the order given."""
        results: list[Generation | None] = [None] * len(prompts)
        for group in self.batches([len(p) for p in prompts]):
            for index, result in zip(group, self._generate_batch([prompts[i] for i in group], max_new_tokens,
                                                                 stop_newline), strict=True):
                results[index] = result
            if on_done is not None:
                on_done(len(group))
        return [r for r in results if r is not None]


class VLLMEngine:
    """vLLM offline engine (GPU): greedy, prompts passed as token ids so lengths are exactly ours."""

    def __init__(self, model_dir: str, max_model_len: int, trust_remote_code: bool = False, **kwargs: Any) -> None:
        from vllm import LLM

        self.llm = LLM(model=model_dir, max_model_len=max_model_len, trust_remote_code=trust_remote_code, **kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_newline: bool = False,
                 on_done: Callable[[int], None] | None = None) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop=["\n"] if stop_newline else None)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        if on_done is not None:
            on_done(len(prompts))
        return [Generation(o.outputs[0].text, len(o.outputs[0].token_ids)) for o in outs]


def resolve_engine(choice: str) -> str:
    """The generation engine that `eval.engine` (auto, hf, vllm) means here: "hf" or "vllm".

    auto: vllm when it can be imported and a GPU is present, else hf. A forced vllm that cannot run is
    an error, never a silent fallback (the engines decode with different kernels).
    """
    import importlib.util

    if choice not in ("auto", "hf", "vllm"):
        raise ValueError(f"unknown eval engine {choice!r}; choose auto, hf or vllm")
    installed, gpu = importlib.util.find_spec("vllm") is not None, torch.cuda.is_available()
    if choice == "auto":
        return "vllm" if installed and gpu else "hf"
    if choice == "vllm" and not (installed and gpu):
        from prolong.errors import UserError

        raise UserError(
            f"eval.engine: vllm needs the vllm package (installed: {'yes' if installed else 'no'}) and a CUDA "
            f"GPU (present: {'yes' if gpu else 'no'}); install vllm on a GPU machine, or use --engine hf or auto"
        )
    return choice
