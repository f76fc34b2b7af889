"""Prompt protocol: HELMET/RULER templates, base vs chat rendering, context-only truncation.

An `Example` keeps its context apart from the rest of the prompt (`template` holds every other field
already filled in and one `{context}` slot), so truncation can cut the end of the context and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# HELMET's user and system templates, char for char (HELMET data.py; RULER tasks from its load_ruler). The
# user template never contains the answer prefix: a base model gets user + separator + prefix, a chat model the
# user text alone through its chat template (HELMET model_utils.tokenize). docs/fidelity.md lists the sources.
JSON_KV_TEMPLATE = (
    "{context}\n\nExtract the value corresponding to the specified key in the JSON object below.\n\n"
    "{demos}Key: {question}"
)
JSON_KV_PREFIX = "Corresponding value:"
NIAH_TEMPLATE = (
    "Some special magic {type} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type} afterwards.\n{context}\n"
    "What are all the special magic {type} for {query} mentioned in the provided text?"
)
NIAH_PREFIX = "The special magic {type} for {query} mentioned in the provided text are"
NIAH_SINGLE_TEMPLATE = (
    "A special magic {type} is hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type} afterwards.\n{context}\n"
    "What is the special magic {type} for {query} mentioned in the provided text?"
)
NIAH_SINGLE_PREFIX = "The special magic {type} for {query} mentioned in the provided text is"
# Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark Attention"), as Position Interpolation, LongLoRA and
# YaRN test a context extension: the task line, the garbage, the information line and the question, joined by
# newlines; the base-model prompt ends at "The pass key is" (the question and prefix on one line).
PASSKEY_TEMPLATE = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there.\n{context}\nWhat is the pass key?"
)
PASSKEY_PREFIX = "The pass key is"
PASSKEY_GARBAGE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
PASSKEY_LINE = "The pass key is {key}. Remember it. {key} is the pass key."
VT_TEMPLATE = (
    "{example}Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above."
)
VT_PREFIX = (
    "Answer: According to the chain(s) of variable assignment in the text above, "
    "{num_v} variables are assigned the value {query}, they are:"
)
CWE_TEMPLATE = (
    "{example}Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\n"
    "Question: What are the 10 most common words in the above list?"
)
CWE_PREFIX = "Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most "
    "frequently appeared coded words.\n{context}\n"
    "Question: Do not provide any explanation. Please ignore the dots '....'. "
    "What are the three most frequently appeared words in the above coded text?"
)
FWE_PREFIX = "Answer: According to the coded text above, the three most frequently appeared words are:"
RAG_TEMPLATE = (
    "Use the given documents to write a concise and short answer to the question. "
    "Write your answer in the following format:\nAnswer: [answer]\n\n{demos}{context}\n\n"
    "Question: {question}"
)
RAG_PREFIX = "Answer:"
RERANK_TEMPLATE = (
    "You are provided with a list of documents, each indicated by their ID. Rank each document based on "
    "their relevance to the question in descending order from most relelvant to least relevant texts. "
    "Include all documents in the rankings. Write your answer using the unique IDs, with the following "
    "format:\nRanking: ID3 > ID1 > ID2\n\n{demos}{context}\n\nQuery: {question}"
)
RERANK_PREFIX = "Ranking:"
ICL_TEMPLATE = (
    'Use the provided mapping from the text to label to assign a label to the text. Only output '
    '"label: {label}" and nothing else. \n\n{context}\n\n{question}'
)
ICL_PREFIX = "label:"
NARRATIVEQA_TEMPLATE = (
    "You are given a story, which can be either a novel or a movie script, and a question. Answer the "
    "question as concisely as you can, using a single phrase if possible.\n\n{demo}{context}\n\n"
    "Question: {question}"
)
MULTI_LEXSUM_TEMPLATE = (
    "You are given the legal documents in a civil rights lawsuit, and you are tasked to summarize the "
    "case. Write a concise summary of one paragraph (200 to 250 words). The summary should contain a "
    "short description of the background, the parties involved, and the outcomes of the case.\n\n"
    "{demo}Legal documents:\n{context}\n\nNow please summarize the case."
)
INFBENCH_QA_TEMPLATE = (
    "You are given a story and a question. Answer the question as concisely as you can, using a single phrase "
    "if possible.\n\n{demo}{context}\n\nQuestion: {question}"
)
INFBENCH_CHOICE_TEMPLATE = (
    "You are given a story and a question with multiple choices. Choose the best answer from the options "
    "provided. Only one of the following options is correct, output the answer using one single letter (A, B, "
    "C, or D). Don't say anything else.\n\n{demo}{context}\n\nQuestion: {question}\nOptions:\n{options}"
)
INFBENCH_SUM_TEMPLATE = (
    "You are given a book and you are tasked to summarize it. Write a summary of about 1000 to 1200 words. "
    "Only write about the plot and characters of the story. Do not discuss the themes or background of the "
    "book. Do not provide any analysis or commentary.\n\n{demo}{context}\n\nNow summarize the book."
)
SUMMARY_PREFIX = "Summary:"
# Base-model separator between the user text and the prefix: "\n", except "\n\n" for Multi-LexSum and
# InfiniteBench (their prompt_template in HELMET).
LONG_SEPARATOR = "\n\n"
# Long documents are cut to (length - reserve - max_new_tokens) tokens ahead of time, marked by this suffix
# (HELMET's truncate_llama2); the prompt is then truncated again, without a suffix, if it still does not fit.
TRUNCATION_SUFFIX = " ... [the rest of the text is omitted]"


def fill(template: str, **fields: str) -> str:
    """Fill named fields except {context}, without str.format (contexts and demos contain braces)."""
    for name, value in fields.items():
        template = template.replace("{" + name + "}", value)
    return template


@dataclass
class Example:
    """One prompt: `template` is the user text with a single `{context}` slot left."""

    id: str
    template: str
    context: str
    answer_prefix: str
    answers: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    separator: str = "\n"  # base models: user text + separator + answer prefix

    def user_text(self, context: str | None = None) -> str:
        before, after = self.template.split("{context}", 1) if "{context}" in self.template else (self.template, "")
        return before + (self.context if context is None else context) + after


def render(tokenizer: Any, user: str, answer_prefix: str, chat: bool, separator: str = "\n") -> str:
    """The prompt string: chat template with a generation prompt, or user + separator + answer prefix."""
    if chat:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
    return user + separator + answer_prefix


def encode(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    """Token ids of a rendered prompt; chat templates carry their own special tokens."""
    return list(tokenizer(prompt, add_special_tokens=not chat)["input_ids"])


def prompt_ids(tokenizer: Any, example: Example, chat: bool, context: str | None = None) -> list[int]:
    """Token ids of `example` rendered (optionally with a replacement context)."""
    prompt = render(tokenizer, example.user_text(context), example.answer_prefix, chat, example.separator)
    return encode(tokenizer, prompt, chat)


def _cut_tokens(tokenizer: Any, text: str, drop: int) -> str:
    """`text` without its last `drop` tokens, cut in the text itself at a token boundary (HELMET's rule).

    The text is tokenized as HELMET does (special tokens included) and cut at the start offset of the
    `drop`-th token from the end; tokenizers without offsets decode the kept tokens instead.
    """
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
        if drop > len(offsets):
            raise ValueError(f"cannot drop {drop} tokens from a context of {len(offsets)}")
        return text[: offsets[-drop][0]]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if drop > len(ids):
        raise ValueError(f"cannot drop {drop} tokens from a context of {len(ids)}")
    return tokenizer.decode(ids[: len(ids) - drop])


def pretruncate_context(tokenizer: Any, context: str, max_tokens: int, suffix: str = TRUNCATION_SUFFIX) -> str:
    """A long document cut to `max_tokens` tokens, `suffix` appended (HELMET's truncate_llama2, on our tokenizer).

    HELMET counts the context with special tokens and keeps it through the end of token
    `max_tokens - len(suffix tokens)`; HELMET does this with the Llama-2 tokenizer for every model.
    """
    if max_tokens <= 0:
        raise ValueError(f"no room for the document: {max_tokens} tokens")
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(context, return_offsets_mapping=True)
        if len(encoded["input_ids"]) <= max_tokens:
            return context
        keep = max_tokens - len(tokenizer(suffix)["input_ids"])
        return context[: encoded["offset_mapping"][max(keep, 0)][1]] + suffix
    ids = tokenizer(context)["input_ids"]
    if len(ids) <= max_tokens:
        return context
    keep = max_tokens - len(tokenizer(suffix)["input_ids"])
    return tokenizer.decode(ids[: max(keep, 0) + 1], skip_special_tokens=True) + suffix


def truncate_context(tokenizer: Any, example: Example, chat: bool, max_prompt_tokens: int) -> tuple[list[int], bool]:
    """Prompt ids no longer than `max_prompt_tokens`, cutting tokens from the end of the context only.

    HELMET's rule (model_utils.tokenize): drop as many context tokens as the prompt is over, in one cut. When
    re-tokenizing at the cut still leaves the prompt over (rare: merges across the cut), we cut again.
    Returns (ids, truncated). Raises ValueError when even an empty context does not fit.
    """
    ids = prompt_ids(tokenizer, example, chat)
    truncated, context = False, example.context
    while len(ids) > max_prompt_tokens:
        try:
            shorter = _cut_tokens(tokenizer, context, len(ids) - max_prompt_tokens)
            if shorter == context:  # nothing left to cut
                raise ValueError(context)
            context = shorter
        except ValueError:
            overhead = len(prompt_ids(tokenizer, example, chat, context=""))
            raise ValueError(
                f"example {example.id}: the prompt without its context takes {overhead} tokens, more than the "
                f"{max_prompt_tokens} allowed; use a longer length"
            ) from None
        ids, truncated = prompt_ids(tokenizer, example, chat, context=context), True
    return ids, truncated
