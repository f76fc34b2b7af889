"""Metrics against hand-computed values."""

from __future__ import annotations

import pytest

from prolong.eval import metrics as M
from prolong.eval.helmet_files import balanced_demos, label_mapping


def test_normalize_answer() -> None:
    assert M.normalize_answer("The  Eiffel-Tower, in Paris!") == "eiffeltower in paris"
    assert M.normalize_answer("an apple a day") == "apple day"
    assert M.normalize_answer("Theatre") == "theatre"  # only whole words are articles


def test_em_subem_f1() -> None:
    assert M.exact_match("the Paris.", ["paris"]) == 1.0
    assert M.exact_match("Paris, France", ["paris"]) == 0.0
    assert M.substring_exact_match("It is Paris, France", ["london", "Paris"]) == 1.0
    assert M.substring_exact_match("Pari", ["paris"]) == 0.0
    # pred "new york city" vs gold "york city council": overlap 2, P = 2/3, R = 2/3 -> F1 = 2/3
    assert M.token_f1("New York City", ["York City Council"]) == pytest.approx(2 / 3)
    assert M.token_f1("x", ["y"]) == 0.0


def test_parse_output_and_qa_metrics() -> None:
    assert M.parse_output("Answer: Paris\nMore text", "Answer:") == "Paris"
    assert M.parse_output("blah\nsecond", "Answer:") == "blah"
    assert M.parse_output("answer: answer: Rome", "Answer:") == "Rome"  # repeated prefix stripped
    scores = M.qa_metrics("Answer: Paris\nI think the answer is London", ["Paris"])
    assert scores["exact_match"] == 1.0  # parsed output matches exactly; raw does not
    assert scores["substring_exact_match"] == 1.0


def test_ruler_string_match() -> None:
    assert M.string_match_all("values: 123 and 456", ["123", "456", "789"]) == pytest.approx(2 / 3)
    assert M.string_match_part("values: 123", ["999", "123"]) == 1.0
    assert M.string_match_all("ABC-def", ["abc-DEF"]) == 1.0


def test_parse_ranking() -> None:
    assert M.parse_ranking("Ranking: [ID: 3] > [ID: 1] > [ID: 2]") == {"3": 3.0, "1": 2.0, "2": 1.0}
    # The longest chain wins; a repeated id keeps its first (higher) score.
    assert M.parse_ranking("7 > 8\nRanking: 5 > 6 > 5 > 4") == {"5": 4.0, "6": 3.0, "4": 1.0}
    # No number at all: HELMET keeps the cleaned text as a single (unmatchable) id, so nDCG is 0.
    assert M.parse_ranking("no ids here") == {"no s here": 1}
    assert M.ndcg_at_10(M.parse_ranking("no ids here"), {"1": 2}) == 0.0


def test_ndcg_at_10_graded() -> None:
    # Ranking d1 (gain 3), d2 (0), d3 (2); ideal d1, d3, d2.
    # trec_eval gain = label, discount log2(rank + 1):
    # DCG = 3/1 + 0/log2(3) + 2/log2(4) = 4.0 ; IDCG = 3/1 + 2/log2(3) + 0 = 4.261859507
    qrels = {"d1": 3, "d2": 0, "d3": 2}
    ranking = {"d1": 3.0, "d2": 2.0, "d3": 1.0}
    assert M.ndcg_at_10(ranking, qrels) == pytest.approx(4.0 / (3 + 2 / 1.584962500721156), abs=1e-4)
    assert M.ndcg_at_10({"d1": 2.0, "d3": 1.0}, qrels) == pytest.approx(1.0)
    assert M.ndcg_at_10({}, qrels) == 0.0


def test_rouge_l_is_stemmed_f1() -> None:
    scores = M.rouge("the cats were running", ["the cat was running"])
    # Stemmed tokens: [the, cat, were, run] vs [the, cat, wa, run]: LCS 3 of 4 -> P = R = F = 0.75
    assert scores["rougeL_f1"] == pytest.approx(0.75)


def test_icl_label_mapping_and_balance() -> None:
    # HELMET's abstract labels: a seeded permutation of 0..C-1, a new one per test example (per seed).
    mapping = label_mapping(6, 123)
    assert sorted(mapping) == list(range(6))
    assert len({tuple(label_mapping(4, s)) for s in range(20)}) > 1
    rows = [{"text": f"t{i}", "label": label} for i, label in enumerate("aaaaaabbbbcc")]
    demos = balanced_demos(rows, 7, 1)
    counts = {label: sum(d["label"] == label for d in demos) for label in "abc"}
    # ceil(7 / 3) = 3 rounds of one row per label, cut to 7: each label 2 or 3 times, every round mixed.
    assert sum(counts.values()) == 7 and all(counts[c] in (2, 3) for c in "abc")
    assert sorted(d["label"] for d in demos[:3]) == ["a", "b", "c"]
    assert balanced_demos(rows, 7, 1) == demos  # seeded


def test_multiple_choice_follows_helmet() -> None:
    from prolong.eval.protocol import Example
    from prolong.eval.tasks import TASKS, score

    # HELMET's answers for InfiniteBench choice: [letter, "letter. option"].
    example = Example("x", "{context}", "", "Answer:", ["B", "B. the red house"])
    spec = TASKS["infbench_choice"]
    assert score(spec, " B", example, chat=False)["exact_match"] == 1.0
    assert score(spec, " C", example, chat=False)["exact_match"] == 0.0
    # The option text anywhere in the output counts (HELMET's substring rule).
    assert score(spec, "I pick b. The red house", example, chat=True)["exact_match"] == 1.0
