"""Short synthetic retrieval and copy documents for the demo's base model.

A model of a few million parameters that sees a million tokens of code and prose learns next to nothing
about using its context; a share of documents where the context must be read back teaches it that
within its training length. Four kinds, each a whole document:

    copy     a passage of the corpus (prose or code) or a list of its identifiers, then the same again
    recall   KEY: VALUE facts, then every key asked again in another order (associative recall)
    niah     a needle ("One of the special magic numbers for KEY is: VALUE.") in noise or prose
             sentences, then RULER's single-needle question and answer (prolong.eval.synthetic's template)
    json_kv  a JSON object of UUID pairs, two worked examples, then HELMET's key question and its value

`passkey_rows` writes one more kind, as prompt/completion rows for an SFT domain: passkey questions in
the evaluation's passkey_digit template, trained on the answer only.

They use the evaluation's own prompt templates with fresh random keys and values, and they are short:
the demo checks, once its tokenizer exists, that none is longer than the base stage's sequence length
(`longest_document_tokens`), so long-context recall is never trained on directly, only the skill at
short range.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prolong.data.text_files import jsonl_records
from prolong.eval import protocol as P
from prolong.eval.synthetic import NOISE, json_kv_example, niah_example, split_sentences
from prolong.eval.words import number_value, uuid4, word_key

# the kinds in turn: copy twice as often as the others (the skill the others build on)
KINDS = ("copy", "recall", "niah", "copy", "json_kv")
# Each document is at most MAX_CHARS characters, its size drawn from SIZE_CHARS. The tokenizer is trained
# after the corpus is written, so the bound is in characters: UUIDs, the densest text here, take about 1.4
# characters per token with a 2K-token BPE, so 680 characters stay under 512 tokens (the demo checks).
MAX_CHARS = 680
SIZE_CHARS = (160, MAX_CHARS)


def needle_sentence(key: str, value: str) -> str:
    """RULER's single needle of the number kind (as prolong.eval.synthetic writes it)."""
    return f"One of the special magic numbers for {key} is: {value}."


def _base_prompt(example: P.Example) -> str:
    """The prompt as the evaluation renders it for a base model (prolong.eval.protocol.render, no chat)."""
    return P.render(None, example.user_text(), example.answer_prefix, chat=False, separator=example.separator)


def _document(example: P.Example, answer: str) -> str:
    """The prompt as the evaluation renders it for a base model, followed by the answer."""
    return _base_prompt(example) + " " + answer


def _largest(build: Callable[[int], str], budget: int, least: int) -> str:
    """build(n) for the largest n >= `least` whose text fits `budget` characters (build(least) if none)."""
    n = least
    while len(build(n + 1)) <= budget:
        n += 1
    return build(n)


def _niah(rng: random.Random, sentences: list[str], index: int, budget: int) -> str:
    key, value = word_key(rng), number_value(rng)
    noise = rng.random() < 0.5 or len(sentences) < 64
    start = rng.randrange(len(sentences) - 63) if not noise else 0
    depth = rng.random()

    def build(n: int) -> str:
        lines = [NOISE] * n if noise else sentences[start : start + n]  # noise: the evaluation's haystack
        lines.insert(round(depth * n), needle_sentence(key, value))
        example = niah_example(f"train-niah-{index}", "ruler_niah_s_1", "\n".join(lines), key, [value])
        return _document(example, value + ".")

    return _largest(build, budget, 0)


def _json_kv(rng: random.Random, index: int, budget: int) -> str:
    pairs = [(uuid4(rng), uuid4(rng)) for _ in range(16)]
    depth, picks = rng.random(), (rng.random(), rng.random())

    def build(n: int) -> str:
        gold = round(depth * (n - 1))
        others = [j for j in range(n) if j != gold]
        demos = sorted({others[int(p * len(others))] for p in picks}) if others else []
        example = json_kv_example(f"train-json_kv-{index}", pairs[:n], gold, demos)
        return _document(example, pairs[gold][1])

    return _largest(build, budget, 1)


def _copy(rng: random.Random, passages: list[str], identifiers: list[str], budget: int) -> str:
    if rng.random() < 0.5 and passages:
        text = rng.choice(passages)
        start = rng.randrange(max(1, len(text) - budget))
        return _largest(lambda n: "Passage:\n" + text[start : start + n] + "\nThe same passage again:\n"
                        + text[start : start + n], budget, 1)
    words = [rng.choice(identifiers) for _ in range(budget)]
    return _largest(lambda n: "Words: " + " ".join(words[:n]) + "\nThe same words again: " + " ".join(words[:n]),
                    budget, 1)


def _recall(rng: random.Random, budget: int) -> str:
    facts = [(word_key(rng), number_value(rng)) for _ in range(32)]
    order = rng.sample(range(32), 32)

    def build(n: int) -> str:
        asked = [facts[j] for j in order if j < n]
        return ("Facts:\n" + "\n".join(f"{k}: {v}" for k, v in facts[:n]) + "\nThe same keys again:\n"
                + "\n".join(f"{k}: {v}" for k, v in asked))

    return _largest(build, budget, 1)


def retrieval_documents(
    prose: list[str], code: list[str], identifiers: list[str], seed: int
) -> Iterator[dict[str, Any]]:
    """Endless {kind, text} rows, the kinds in turn: `prose` gives haystack sentences and passages,
    `code` passages, `identifiers` words to copy (names found in the corpus' code)."""
    rng = random.Random(f"retrieval/{seed}")
    sentences = [s for text in prose for s in split_sentences(text) if 20 <= len(s) <= 200]
    passages = [text for text in prose + code if len(text) >= 2 * MAX_CHARS]
    index = 0
    while True:
        kind = KINDS[index % len(KINDS)]
        budget = rng.randint(*SIZE_CHARS)
        if kind == "niah":
            text = _niah(rng, sentences, index, budget)
        elif kind == "json_kv":
            text = _json_kv(rng, index, budget)
        elif kind == "recall":
            text = _recall(rng, budget)
        else:
            text = _copy(rng, passages, identifiers, budget)
        yield {"kind": kind, "text": text}
        index += 1


# Passkey rows: at most this many characters of garbage (2.37 characters a token with the demo's 2K BPE, so
# about 340 tokens, plus about 80 for the task line, information line and question: under 512, checked).
# The amount is drawn skewed to short rows (max * u^3: half under 100 characters): with rows of 80-420
# tokens drawn evenly, one of two demo bases tried never found the key in 80-150 steps; short rows form
# the skill, the longer ones carry it to 512 tokens (README, "Why the SFT is given twice").
PASSKEY_GARBAGE_CHARS = 800


def passkey_rows(seed: int) -> Iterator[dict[str, str]]:
    """Endless {prompt, completion} rows of one-digit passkey retrieval in the evaluation's own template
    (prolong.eval.synthetic.passkey_example, as task passkey_digit renders it for a base model), with up to
    PASSKEY_GARBAGE_CHARS characters of garbage (mostly short) and the line at a random depth; the
    completion is the key and a full stop. Trained with the loss on the completion only (an SFT domain
    with prompt_field)."""
    from prolong.eval.synthetic import passkey_example

    rng = random.Random(f"passkey/{seed}")
    index = 0
    while True:
        garbage, key = int(PASSKEY_GARBAGE_CHARS * rng.random() ** 3), str(rng.randint(0, 9))
        before = rng.randint(0, garbage)
        example = passkey_example(f"train-passkey-{index}", key, before, garbage - before)
        yield {"prompt": _base_prompt(example), "completion": f" {key}."}
        index += 1


def longest_document_tokens(path: str | Path, tokenizer: Any) -> int:
    """Tokens of the longest document of a retrieval JSONL, text or prompt/completion rows (what the demo
    checks against the base length)."""
    texts = [str(row["text"]) if "text" in row else str(row["prompt"]) + str(row["completion"])
             for _, row in jsonl_records(Path(path))]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]] if texts else [0]
    return max(lengths)
