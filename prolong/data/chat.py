"""SFT rows as token ids and a loss mask: chat conversations rendered with the tokenizer's own template
(assistant-only loss), and plain-text prompt/completion pairs (loss on the completion).

The mask comes from the template itself: the text an assistant turn adds is the difference between
rendering the conversation up to that turn and rendering the prefix before it with the generation
prompt. Tokens holding any character of such a span are trained on. This works for any
template that renders prefixes consistently (Llama-3, Qwen2, Mistral, ours), without needing
`{% generation %}` markers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from prolong.errors import UserError


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    """Validate a conversation: a list of {role, content} with string content."""
    if not isinstance(messages, list) or not messages:
        got = "an empty list" if isinstance(messages, list) else type(messages).__name__
        raise UserError(f"{where}: messages must be a non-empty list of {{role, content}}, got {got}")
    for number, turn in enumerate(messages, start=1):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            fields = sorted(turn) if isinstance(turn, dict) else type(turn).__name__
            raise UserError(f"{where}: each message needs 'role' and 'content'; found {fields}")
        for key in ("role", "content"):
            if not isinstance(turn[key], str):  # str(None) would train on the text "None"
                raise UserError(
                    f"{where}: message {number}: {key!r} should be text, got {type(turn[key]).__name__}"
                )
    return [{"role": t["role"], "content": t["content"]} for t in messages]


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans the assistant turns add to it."""
    text = _render(tokenizer, messages, generation_prompt=False)
    spans = []
    for i, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], generation_prompt=True) if i else ""
        upto = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not (text.startswith(upto) and upto.startswith(before)):
            raise UserError(
                "the tokenizer's chat template does not render conversation prefixes consistently, "
                "so the assistant tokens cannot be found; use a template whose output for the first "
                "k turns is a prefix of its output for all turns"
            )
        if i == 0:
            # No prefix to diff against: the turn starts after its role header, i.e. where its content is.
            start = upto.rfind(turn["content"])
            before = upto[: max(start, 0)]
        spans.append((len(before), len(upto)))
    return text, spans


def _encode_trained_spans(tokenizer: Any, text: str, spans: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of `text` (no special tokens added) and a mask of the tokens holding any character of
    the trained character spans."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(encoded["input_ids"], dtype=np.uint32)
    offsets = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    starts, ends = offsets[:, 0], offsets[:, 1]
    mask = np.zeros(len(ids), dtype=bool)
    for lo, hi in spans:
        # a token that straddles the boundary (e.g. "\n\n" = header newline + reply newline) carries
        # trained text, so it is trained on
        mask |= (starts < hi) & (ends > lo)
    return ids, mask


def render_conversation(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and the assistant-only loss mask (bool) of one conversation."""
    text, spans = assistant_spans(tokenizer, messages)
    return _encode_trained_spans(tokenizer, text, spans)


def render_completion(
    tokenizer: Any, prompt: str, completion: str, bos: int | None, eos: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and loss mask of a plain-text prompt/completion pair: BOS, prompt + completion tokenized
    as one text (what a base model reads at evaluation, then generates), EOS. The completion's tokens and
    EOS are trained on; a token straddling the boundary holds completion text, so it is trained on too."""
    text = prompt + completion
    ids, mask = _encode_trained_spans(tokenizer, text, [(len(prompt), len(text))])
    head, tail = [bos] if bos is not None else [], [eos] if eos is not None else []
    ids = np.concatenate([np.asarray(head, np.uint32), ids, np.asarray(tail, np.uint32)])
    return ids, np.concatenate([np.zeros(len(head), bool), mask, np.ones(len(tail), bool)])
