"""HELMET/RULER metrics: answer normalization, EM/SubEM/F1, RULER string match, nDCG@10, ROUGE-L.

Definitions follow specs/eval-protocol.md so that scores are comparable with published numbers.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop ASCII punctuation, replace the words a/an/the by a space, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Iterable[str]) -> float:
    """1.0 when the normalized prediction equals a normalized gold answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def substring_exact_match(prediction: str, answers: Iterable[str]) -> float:
    """SubEM: 1.0 when a normalized gold answer is a substring of the normalized prediction."""
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(a) in pred for a in answers))


def token_f1(prediction: str, answers: Iterable[str]) -> float:
    """Token-level F1 of normalized strings, max over gold answers."""
    pred_tokens = normalize_answer(prediction).split()
    best = 0.0
    for answer in answers:
        gold_tokens = normalize_answer(answer).split()
        common = Counter(pred_tokens) & Counter(gold_tokens)
        same = sum(common.values())
        if same == 0:
            continue
        precision, recall = same / len(pred_tokens), same / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def parse_output(output: str, prefix: str = "Answer:") -> str:
    """Text after `prefix` up to the end of its line (case-insensitive), else the first line."""
    # re.escape keeps prefixes such as "label:" literal; HELMET's prefixes contain no regex syntax.
    match = re.search(rf"(?:{re.escape(prefix)})(.*)(?:\n|$)", output, flags=re.IGNORECASE)
    text = match.group(1) if match else output.split("\n")[0]
    # Chat models sometimes repeat the prefix; HELMET strips it once more.
    return re.sub(f"^{re.escape(prefix)}", "", text.strip(), flags=re.IGNORECASE).strip()


def qa_metrics(output: str, answers: list[str], prefix: str = "Answer:") -> dict[str, float]:
    """EM, SubEM and F1, each the max over the raw and the parsed output (HELMET's rule)."""
    parsed = parse_output(output, prefix)
    return {
        "exact_match": max(exact_match(output, answers), exact_match(parsed, answers)),
        "substring_exact_match": max(substring_exact_match(output, answers), substring_exact_match(parsed, answers)),
        "f1": max(token_f1(output, answers), token_f1(parsed, answers)),
    }


def string_match_all(prediction: str, references: list[str]) -> float:
    """RULER: fraction of references found (case-insensitive) in the prediction."""
    pred = prediction.lower()
    return sum(ref.lower() in pred for ref in references) / len(references)


def string_match_part(prediction: str, references: list[str]) -> float:
    """RULER: 1.0 when any reference is found (case-insensitive) in the prediction."""
    pred = prediction.lower()
    return float(max(ref.lower() in pred for ref in references))


_RANKING = re.compile(r"(\d+)(?:\s*>\s*(\d+))*")


def parse_ranking(output: str) -> dict[str, float]:
    """Re-rank output -> {doc id: score}: longest `a > b > ...` run, score = len - position, first kept."""
    text = output.replace("[", "").replace("]", "").replace(":", "").lower().replace("id", "")
    runs = [m.group(0) for m in _RANKING.finditer(text)]
    if not runs:
        return {}
    best = max(runs, key=lambda run: len(run.split(">")))
    ids = [part.strip() for part in best.split(">")]
    scores: dict[str, float] = {}
    for position, doc_id in enumerate(ids):
        scores.setdefault(doc_id, float(len(ids) - position))
    return scores


def ndcg_at_10(ranking: dict[str, float], qrels: dict[str, int], qid: str = "q") -> float:
    """trec_eval ndcg_cut.10 through pytrec_eval, graded labels as gains."""
    import pytrec_eval

    if not ranking:
        return 0.0
    evaluator = pytrec_eval.RelevanceEvaluator({qid: {k: int(v) for k, v in qrels.items()}}, {"ndcg_cut.10"})
    return float(evaluator.evaluate({qid: ranking})[qid]["ndcg_cut_10"])


_ROUGE_SCORER = None


def rouge_l(prediction: str, references: list[str]) -> dict[str, float]:
    """ROUGE-L (rouge-score, Porter stemmer): F1, precision and recall of the best reference by F1."""
    global _ROUGE_SCORER
    if _ROUGE_SCORER is None:  # building the scorer loads the stemmer once per process
        from rouge_score import rouge_scorer

        _ROUGE_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    best = max((_ROUGE_SCORER.score(ref, prediction)["rougeL"] for ref in references), key=lambda s: s.fmeasure)
    return {"rougeL_f1": best.fmeasure, "rougeL_precision": best.precision, "rougeL_recall": best.recall}
