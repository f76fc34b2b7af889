"""Fixtures for the model-layer tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A word-level tokenizer of a few dozen words, saved like any HF tokenizer (no network needed)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [
        "the",
        "a",
        "long",
        "context",
        "model",
        "reads",
        "books",
        "and",
        "code",
        "from",
        "many",
        "documents",
        "to",
        "learn",
    ]
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>", "<pad>", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    out = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(out)
    return out
