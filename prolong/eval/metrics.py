"""HELMET/RULER metrics: answer normalization, EM/SubEM/F1, ROUGE-L, RULER string match, ranking parse, nDCG@10.

Each function follows the definition in HELMET's utils.py / RULER's eval constants (see docs/fidelity.md for
the line-by-line comparison); tests/eval/test_fidelity_metrics.py checks them against scores computed by the
upstream code itself (tests/fixtures/helmet/metrics.json, tests/fixtures/ruler/metrics.json).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
# HELMET's f1_score: a yes/no/noanswer prediction or gold scores 0 unless both are the same string.
_CLOSED_ANSWERS = ("yes", "no", "noanswer")


def normalize_answer(text: str) -> str:
    """Lowercase, drop ASCII punctuation, replace the words a/an/the by a space, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _answers(answers: str | Iterable[str] | Iterable[list[str]]) -> list[str]:
    """Gold answers as a flat list (HELMET accepts a string, a list, or a list of lists)."""
    if isinstance(answers, str):
        return [answers]
    items: list[Any] = list(answers)
    if items and isinstance(items[0], list):
        return [a for group in items for a in group]
    return items


def exact_match(prediction: str, answers: str | Iterable[str]) -> float:
    """1.0 when the normalized prediction equals a normalized gold answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in _answers(answers)))


def substring_exact_match(prediction: str, answers: str | Iterable[str]) -> float:
    """SubEM: 1.0 when a normalized gold answer is a substring of the normalized prediction."""
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(a) in pred for a in _answers(answers)))


def _f1(prediction: str, answer: str) -> float:
    pred, gold = normalize_answer(prediction), normalize_answer(answer)
    if (pred in _CLOSED_ANSWERS or gold in _CLOSED_ANSWERS) and pred != gold:
        return 0.0
    pred_tokens, gold_tokens = pred.split(), gold.split()
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, answers: str | Iterable[str]) -> float:
    """Token-level F1 of normalized strings, max over gold answers (yes/no/noanswer must match exactly)."""
    return max((_f1(prediction, a) for a in _answers(answers)), default=0.0)


def parse_output(output: str, prefix: str = "Answer:") -> str:
    """Text after `prefix` up to the end of its line (case-insensitive), else the first line."""
    # re.escape keeps prefixes such as "label:" literal; HELMET's prefixes contain no regex syntax.
    match = re.search(rf"(?:{re.escape(prefix)})(.*)(?:\n|$)", output, flags=re.IGNORECASE)
    text = match.group(1) if match else output.split("\n")[0]
    # Chat models sometimes repeat the prefix; HELMET strips it once more.
    return re.sub(f"^{re.escape(prefix)}", "", text.strip(), flags=re.IGNORECASE).strip()


_ROUGE_SCORER = None


def rouge(prediction: str, answers: str | Iterable[str]) -> dict[str, float]:
    """ROUGE-L and ROUGE-Lsum (rouge-score, Porter stemmer): F1 and recall, each the max over gold answers."""
    global _ROUGE_SCORER
    if _ROUGE_SCORER is None:  # building the scorer loads the stemmer once per process
        from rouge_score import rouge_scorer

        _ROUGE_SCORER = rouge_scorer.RougeScorer(["rougeL", "rougeLsum"], use_stemmer=True)
    scores = [_ROUGE_SCORER.score(target=a, prediction=prediction) for a in _answers(answers)]
    out: dict[str, float] = {}
    for kind in ("rougeL", "rougeLsum"):
        out[f"{kind}_f1"] = max(s[kind].fmeasure for s in scores)
        out[f"{kind}_recall"] = max(s[kind].recall for s in scores)
    return out


def answer_metrics(prediction: str, answers: str | Iterable[str]) -> dict[str, float]:
    """HELMET's calculate_metrics: EM, F1, SubEM and ROUGE-L/Lsum of one prediction."""
    return {"exact_match": exact_match(prediction, answers), "f1": token_f1(prediction, answers),
            "substring_exact_match": substring_exact_match(prediction, answers), **rouge(prediction, answers)}


def qa_metrics(output: str, answers: str | Iterable[str], prefix: str = "Answer:") -> dict[str, float]:
    """Every answer metric, each the max over the raw and the parsed output (HELMET's default post-process)."""
    raw, parsed = answer_metrics(output, answers), answer_metrics(parse_output(output, prefix), answers)
    return {name: max(value, parsed[name]) for name, value in raw.items()}


def string_match_all(prediction: str, references: list[str]) -> float:
    """RULER: fraction of references found (case-insensitive) in the prediction."""
    pred = prediction.lower()
    return sum(ref.lower() in pred for ref in references) / len(references)


def string_match_part(prediction: str, references: list[str]) -> float:
    """RULER: 1.0 when any reference is found (case-insensitive) in the prediction."""
    pred = prediction.lower()
    return float(max(ref.lower() in pred for ref in references))


def first_number_match(prediction: str, answers: list[str]) -> float:
    """Passkey retrieval's rule (LongLoRA, YaRN): the first integer in the prediction is the key."""
    found = re.search(r"\d+", prediction)
    return float(found is not None and found.group() in answers)


_RANKING = re.compile(r"(\d+)(?:\s*>\s*(\d+))*")


def parse_ranking(output: str) -> dict[str, int]:
    """Re-rank output -> {doc id: score}: the longest `a > b > ...` match (in characters), score = len - position.

    A repeated id keeps its first score. Without any number the whole (cleaned) text becomes a single id,
    which matches no document, as in HELMET.
    """
    text = re.sub(r"[\[\]:]", "", output).lower().replace("id", "")
    longest = ""
    for match in _RANKING.finditer(text):
        if len(match.group(0)) > len(longest):
            longest = match.group(0)
    ids = [part.strip() for part in longest.split(">") if part.strip().isdigit()] if longest else [text]
    scores: dict[str, int] = {}
    for position, doc_id in enumerate(ids):
        scores.setdefault(doc_id, len(ids) - position)
    return scores


def ndcg_at_10(ranking: Mapping[str, float], qrels: Mapping[str, int], qid: str = "q") -> float:
    """trec_eval ndcg_cut.10 through pytrec_eval, graded labels as gains, rounded to 5 decimals as HELMET does."""
    import pytrec_eval

    if not ranking:
        return 0.0
    evaluator = pytrec_eval.RelevanceEvaluator({qid: {k: int(v) for k, v in qrels.items()}}, {"ndcg_cut.10"})
    run = {qid: {doc: float(s) for doc, s in ranking.items()}}
    return round(float(evaluator.evaluate(run)[qid]["ndcg_cut_10"]), 5)
