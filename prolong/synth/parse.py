"""Reading the generator's "Reasoning: ... Question: ... Answer: ..." replies (paper Table 15)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# A label may be decorated the way chat models like to ("**Question:**", "## Answer:", "Question :");
# it must start a line or follow whitespace so "the Question: of" inside a sentence still needs a colon.
_LABEL = re.compile(r"(?:^|(?<=\s))[#*_ ]*(reasoning|question|answer)[*_ ]*:[*_]*", re.IGNORECASE)


@dataclass(frozen=True)
class QAPair:
    """A generated question and its answer; the reasoning is kept for inspection only."""

    question: str
    answer: str
    reasoning: str = ""


def parse_qa(reply: str) -> QAPair | None:
    """The first complete Question/Answer pair in `reply`, or None when the reply is malformed.

    Malformed: no "Question:" label, no "Answer:" label after it, or either part empty. Text after
    the answer that starts a new labelled part (a second pair) is dropped.
    """
    parts: list[tuple[str, str]] = []  # (label, text up to the next label)
    matches = list(_LABEL.finditer(reply))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(reply)
        parts.append((match.group(1).lower(), reply[match.end() : end].strip()))
    for i, (label, question) in enumerate(parts):
        if label != "question":
            continue
        if i + 1 < len(parts) and parts[i + 1][0] == "answer":
            answer = parts[i + 1][1]
            if question and answer:
                reasoning = next((text for lab, text in reversed(parts[:i]) if lab == "reasoning"), "")
                return QAPair(question=question, answer=answer, reasoning=reasoning)
    return None
