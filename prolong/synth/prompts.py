"""Prompts sent to the generator and templates that turn its output into training examples.

The QA generation prompt is the paper's (Table 15). Training examples sample one instruction
phrasing and one layout each (Table 16 style) so the fine-tuned model does not learn one format.
"""

from __future__ import annotations

import random

# ------------------------------------------------------------------------------ generator prompts
QA_GENERATION = """Given the following snippet of a book, ask a relevant question and provide the answer. The question and the answer should follow the following rules:

(1) The question should be specific enough that it can only be answered with the snippet. The question should also be interesting and intellectual enough that a curious reader of the book would ask about it.

(2) The question and the answer should be comprehensible given just the whole book without highlighting the snippet. With that being said, the question should NOT refer to the snippet directly (e.g., do NOT say things like "Question: given the conversation in the snippet, what ..."). The answer also should not mention "the snippet ..." explicitly (assuming that the snippet is never provided), but it can copy the snippet content as a reference when answering the question.

(3) The answer should be concise but also should provide references to the book when needed. For example, "Wellington Yueh betrayed the Atreides, as the book mentioned, '...'".

*** Start of the snippet ***

{snippet}

*** End of the snippet ***

Before generating the question and the answer, first reason about what this snippet is about. In your generation, stick to the following format:

Reasoning: this snippet is about ...
Question: ...
Answer: ..."""

SUMMARIZE_CHUNK = """Below is a part of a longer book. Summarize it in a few paragraphs: the main events, characters, ideas and how they develop. Write only the summary.

*** Start of the part ***

{text}

*** End of the part ***"""

SUMMARIZE_SUMMARIES = """Below are summaries of consecutive parts of a book, in order. Combine them into one coherent summary of the whole span they cover: keep the main events, characters and ideas, drop repetition. Write only the summary.

{text}"""

# --------------------------------------------------------------------- training-example templates
QA_PROMPTS = [
    "Given the document, please answer the question.",
    "Here is a piece of text; answer the following question based on it.",
    "Please answer the question using the provided content.",
    "Based on the given passage, respond to the question.",
    "Read the snippet and answer the question that follows.",
    "Using the provided text, answer the following question.",
]

QA_LAYOUTS = [
    "{prompt}\n\n{documents}\n\nQuestion: {question}",
    "{prompt}\n\n=== document starts ===\n{documents}\n=== document ends ===\n\nQuestion: {question}",
    "{prompt}\n\n{documents}\n\n{question}",
    "{prompt} Question: {question}\n\n{documents}",
    "{prompt} {question}\n\n{documents}",
    "{prompt}\n\n{question}\n\n{documents}",
]

RAG_PROMPTS = [
    "Answer the question based on the given passages.",
    "Use the retrieved documents below to answer the question.",
    "Here are some passages retrieved for a question; answer it using them.",
    "Read the following documents and answer the question; only some of them are relevant.",
    "Based on the search results below, respond to the question.",
]

# A passage list is written in one of these styles; {i} counts from 1.
RAG_PASSAGE_STYLES = [
    "Document [{i}]: {text}",
    "Passage {i}:\n{text}",
    "[{i}] {text}",
    "=== document {i} ===\n{text}",
]

RAG_LAYOUTS = [
    "{prompt}\n\n{documents}\n\nQuestion: {question}",
    "{prompt}\n\nQuestion: {question}\n\n{documents}",
    "{prompt}\n\n{documents}\n\n{question}",
    "{documents}\n\n{prompt} Question: {question}",
]

SUMM_PROMPTS = [
    "Summarize the book.",
    "Write a summary of the following book.",
    "Please summarize the text below.",
    "Read the book and write a concise summary of it.",
    "Give an overview of the main events and ideas of this text.",
    "What is this book about? Summarize it.",
]

SUMM_LAYOUTS = [
    "{prompt}\n\n{documents}",
    "{documents}\n\n{prompt}",
    "{prompt}\n\n=== book starts ===\n{documents}\n=== book ends ===",
    "{documents}\n\n=== end of book ===\n\n{prompt}",
]


def qa_instruction(rng: random.Random, document: str, question: str) -> str:
    """The user turn of a QA example: the whole document and the question, in a sampled layout."""
    layout, prompt = rng.choice(QA_LAYOUTS), rng.choice(QA_PROMPTS)
    return layout.format(prompt=prompt, documents=document, question=question)


def rag_instruction(rng: random.Random, passages: list[str], question: str) -> str:
    """The user turn of a RAG example: numbered passages (already shuffled) and the question."""
    style, layout, prompt = rng.choice(RAG_PASSAGE_STYLES), rng.choice(RAG_LAYOUTS), rng.choice(RAG_PROMPTS)
    documents = "\n\n".join(style.format(i=i, text=text.strip()) for i, text in enumerate(passages, start=1))
    return layout.format(prompt=prompt, documents=documents, question=question)


def summ_instruction(rng: random.Random, book: str) -> str:
    """The user turn of a summarization example: the book and an instruction, in a sampled layout."""
    layout, prompt = rng.choice(SUMM_LAYOUTS), rng.choice(SUMM_PROMPTS)
    return layout.format(prompt=prompt, documents=book)
