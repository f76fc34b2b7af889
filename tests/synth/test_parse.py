"""The "Reasoning / Question / Answer" reply format (paper Table 15), on fixed strings."""

from __future__ import annotations

import pytest

from prolong.synth.parse import QAPair, parse_qa


def test_paper_format_on_separate_lines() -> None:
    reply = (
        "Reasoning: this snippet is about a letter Eudora Welty wrote.\n"
        "Question: What kind of job did Eudora Welty apply for at The New Yorker in 1933?\n"
        "Answer: She offered to review picture galleries and 15¢ movies, as the book mentioned, '...'."
    )
    assert parse_qa(reply) == QAPair(
        question="What kind of job did Eudora Welty apply for at The New Yorker in 1933?",
        answer="She offered to review picture galleries and 15¢ movies, as the book mentioned, '...'.",
        reasoning="this snippet is about a letter Eudora Welty wrote.",
    )


def test_one_line_and_markdown_labels() -> None:
    pair = parse_qa("Reasoning: about a duel. Question: Who won the duel? Answer: Paul, as the book says.")
    assert pair == QAPair("Who won the duel?", "Paul, as the book says.", "about a duel.")
    pair = parse_qa(
        "**Reasoning:** x\n\n**Question:** Why did Yueh betray them?\n\n**Answer:** To save Wanna."
    )
    assert pair == QAPair("Why did Yueh betray them?", "To save Wanna.", "x")
    assert parse_qa("question: lower case?\nANSWER: yes") == QAPair("lower case?", "yes")


def test_multiline_answer_kept_and_second_pair_dropped() -> None:
    reply = "Question: List the ships.\nAnswer: The book names\n- the Argo\n- the Nautilus\nQuestion: Another?\nAnswer: No."
    pair = parse_qa(reply)
    assert pair is not None
    assert pair.answer == "The book names\n- the Argo\n- the Nautilus"
    assert pair.question == "List the ships."


def test_first_complete_pair_wins() -> None:
    pair = parse_qa("Question: unanswered?\nReasoning: hmm\nQuestion: Second?\nAnswer: Yes.")
    assert pair == QAPair("Second?", "Yes.", reasoning="hmm")


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "Sure! Here is a question about the book.",
        "Reasoning: about ships.\nQuestion: Which ship sank?",  # no answer
        "Reasoning: about ships.\nAnswer: The Argo.",  # no question
        "Answer: The Argo.\nQuestion: Which ship sank?",  # answer before question
        "Question:\nAnswer: The Argo.",  # empty question
        "Question: Which ship sank?\nAnswer:   ",  # empty answer
        "The Question: is which ship sank",  # label-looking words without an answer
    ],
)
def test_malformed_replies_are_none(reply: str) -> None:
    assert parse_qa(reply) is None
