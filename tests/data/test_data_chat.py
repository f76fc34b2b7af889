"""SFT masks cover exactly the assistant tokens (our template and prefix-consistent others), or the completion."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prolong.data.chat import assistant_spans, render_completion, render_conversation
from prolong.errors import UserError

words = st.text(alphabet="abcdefgh xyz.,\n", min_size=1, max_size=40)


@st.composite
def conversations(draw):
    turns = draw(st.integers(1, 4))
    messages = [{"role": "system", "content": draw(words)}] if draw(st.booleans()) else []
    for _ in range(turns):
        messages.append({"role": "user", "content": draw(words)})
        messages.append({"role": "assistant", "content": draw(words)})
    return messages


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=conversations())
def test_mask_covers_exactly_assistant_tokens(tokenizer, messages) -> None:
    ids, mask = render_conversation(tokenizer, messages)
    text, spans = assistant_spans(tokenizer, messages)
    assert len(spans) == sum(m["role"] == "assistant" for m in messages)
    assert tokenizer.decode(ids.tolist(), skip_special_tokens=False) == text
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assistant_chars = np.zeros(len(text), dtype=bool)
    for lo, hi in spans:
        assistant_chars[lo:hi] = True
    covered = np.zeros(len(text), dtype=bool)
    for (start, end), trained in zip(offsets, mask, strict=True):
        # a token is trained on exactly when it holds assistant text
        assert trained == bool(assistant_chars[start:end].any()), (text[start:end], trained)
        covered[start:end] |= trained
    assert covered[assistant_chars].all()  # every assistant character lies in a trained token
    masked_text = tokenizer.decode(ids[mask].tolist(), skip_special_tokens=False)
    for message in messages:
        if message["role"] == "assistant":
            assert message["content"] in masked_text
    # the turn's end marker is trained on (the model must learn to stop); role headers are not
    assert masked_text.count("<|end|>") == len(spans) and "<|user|>" not in masked_text


def test_mask_agrees_with_generation_markers(tokenizer) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    ids, mask = render_conversation(tokenizer, messages)
    reference = tokenizer.apply_chat_template(messages, return_assistant_tokens_mask=True, return_dict=True)
    assert ids.tolist() == reference["input_ids"]
    # transformers' mask from {% generation %} covers content + <|end|>; ours adds the turn's newline
    ours = np.asarray(mask, dtype=int)
    theirs = np.asarray(reference["assistant_masks"])
    assert (ours[theirs == 1] == 1).all()
    assert tokenizer.decode(ids[(ours == 1) & (theirs == 0)].tolist()) == "\n"


def test_inconsistent_template_is_refused(tokenizer) -> None:
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if messages|length > 1 %}!{% endif %}"
    original = tokenizer.chat_template
    tokenizer.chat_template = "{{ messages|length }}" + template
    try:
        with pytest.raises(UserError, match="prefix"):
            render_conversation(
                tokenizer, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
            )
    finally:
        tokenizer.chat_template = original


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=words, completion=words)
def test_completion_mask_covers_the_completion_and_eos(tokenizer, prompt, completion) -> None:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids, mask = render_completion(tokenizer, prompt, completion, bos, eos)
    assert ids[0] == bos and not mask[0] and ids[-1] == eos and mask[-1]
    assert tokenizer.decode(ids[1:-1].tolist()) == prompt + completion
    # trained tokens are exactly those holding a completion character, and together they hold all of it
    offsets = tokenizer(prompt + completion, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert mask[1:-1].tolist() == [end > len(prompt) for _, end in offsets]
    assert tokenizer.decode(ids[mask].tolist()[:-1]).endswith(completion)


def test_completion_prompt_is_what_a_base_model_reads(tokenizer) -> None:
    """The untrained part is the prompt as the evaluation encodes it for a base model (BOS + prompt)."""
    from prolong.eval.protocol import encode

    prompt, completion = "The special magic number for tall-box is", " 7."
    ids, mask = render_completion(tokenizer, prompt, completion, tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert ids[~mask].tolist() == encode(tokenizer, prompt, chat=False)
    assert tokenizer.decode(ids[mask].tolist(), skip_special_tokens=True) == completion
