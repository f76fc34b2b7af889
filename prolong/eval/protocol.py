"""Prompt protocol: HELMET/RULER templates, base vs chat rendering, context-only truncation.

An `Example` keeps its context apart from the rest of the prompt (`template` holds every other field
already filled in and one `{context}` slot), so truncation can cut the end of the context and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Templates are quoted char for char from specs/eval-protocol.md (published HELMET/RULER strings).
JSON_KV_TEMPLATE = (
    "{context}\n\nExtract the value corresponding to the specified key in the JSON object below.\n\n"
    "{demos}Key: {question}\nCorresponding value:"
)
JSON_KV_PREFIX = "Corresponding value:"
NIAH_TEMPLATE = (
    "Some special magic {type} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type} afterwards.\n{context}\n"
    "What are all the special magic {type} for {query} mentioned in the provided text?"
)
NIAH_PREFIX = " The special magic {type} for {query} mentioned in the provided text are"
NIAH_PREFIX_SINGULAR = " A special magic {type_singular} for {query} mentioned in the provided text is"
VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above."
)
VT_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, "
    "{num_v} variables are assigned the value {query}, they are: "
)
CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\n"
    "Question: What are the 10 most common words in the above list?"
)
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most "
    "frequently appeared coded words. {context}\n"
    "Question: Do not provide any explanation. Please ignore the dots '....'. "
    "What are the three most frequently appeared words in the above coded text?"
)
FWE_PREFIX = (
    " Answer: According to the coded text above, the three most frequently appeared words are:"
)
RAG_TEMPLATE = (
    "Use the given documents to write a concise and short answer to the question. "
    "Write your answer in the following format:\nAnswer: [answer]\n\n{demos}{context}\n\n"
    "Question: {question}\nAnswer:"
)
RAG_PREFIX = "Answer:"
RERANK_TEMPLATE = (
    "You are provided with a list of documents, each indicated by their ID. Rank each document based on "
    "their relevance to the question in descending order from most relelvant to least relevant texts. "
    "Include all documents in the rankings. Write your answer using the unique IDs, with the following "
    "format:\nRanking: ID3 > ID1 > ID2\n\n{demos}{context}\n\nQuery: {question}\nRanking:"
)
RERANK_PREFIX = "Ranking:"
ICL_TEMPLATE = (
    'Use the provided mapping from the text to label to assign a label to the text. Only output '
    '"label: {label}" and nothing else. \n\n{context}\n\n{question}\nlabel:'
)
ICL_PREFIX = "label:"
NARRATIVEQA_TEMPLATE = (
    "You are given a story, which can be either a novel or a movie script, and a question. Answer the "
    "question as concisely as you can, using a single phrase if possible.\n\n{demo}{context}\n\n"
    "Question: {question}\nAnswer:"
)
MULTI_LEXSUM_TEMPLATE = (
    "You are given the legal documents in a civil rights lawsuit, and you are tasked to summarize the "
    "case. Write a concise summary of one paragraph (200 to 250 words). The summary should contain a "
    "short description of the background, the parties involved, and the outcomes of the case.\n\n"
    "{demo}Legal documents:\n{context}\n\nNow please summarize the case.\n\nSummary:"
)
SUMMARY_PREFIX = "Summary:"
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

    def user_text(self, context: str | None = None) -> str:
        before, after = self.template.split("{context}", 1) if "{context}" in self.template else (self.template, "")
        return before + (self.context if context is None else context) + after


def render(tokenizer: Any, user: str, answer_prefix: str, chat: bool) -> str:
    """The prompt string: chat template with a generation prompt, or user + newline + answer prefix."""
    if chat:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
    return user + "\n" + answer_prefix


def encode(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    """Token ids of a rendered prompt; chat templates carry their own special tokens."""
    return list(tokenizer(prompt, add_special_tokens=not chat)["input_ids"])


def prompt_ids(tokenizer: Any, example: Example, chat: bool, context: str | None = None) -> list[int]:
    """Token ids of `example` rendered (optionally with a replacement context)."""
    return encode(tokenizer, render(tokenizer, example.user_text(context), example.answer_prefix, chat), chat)


def truncate_context(
    tokenizer: Any, example: Example, chat: bool, max_prompt_tokens: int, suffix: str = ""
) -> tuple[list[int], bool]:
    """Prompt ids no longer than `max_prompt_tokens`, cutting tokens from the end of the context only.

    Returns (ids, truncated). `suffix` (e.g. " ... [the rest of the text is omitted]") marks a cut.
    Raises ValueError when even an empty context does not fit: the instructions are never cut.
    """
    ids = prompt_ids(tokenizer, example, chat)
    if len(ids) <= max_prompt_tokens:
        return ids, False
    context_ids = tokenizer(example.context, add_special_tokens=False)["input_ids"]
    overhead = len(prompt_ids(tokenizer, example, chat, context=suffix))
    keep = max_prompt_tokens - overhead
    if keep < 0:
        raise ValueError(
            f"example {example.id}: the prompt without its context takes {overhead} tokens, more than the "
            f"{max_prompt_tokens} allowed; use a longer length"
        )
    # Re-tokenizing decoded text can merge differently at the cut, so shrink until it fits.
    while True:
        context = tokenizer.decode(context_ids[:keep]) + suffix
        ids = prompt_ids(tokenizer, example, chat, context=context)
        if len(ids) <= max_prompt_tokens or keep == 0:
            return ids, True
        keep -= max(1, len(ids) - max_prompt_tokens)
        keep = max(keep, 0)
