"""HELMET tasks read from local JSONL files: RAG, re-rank, ICL, long QA, summarization.

File names under `data_dir` follow HELMET's download layout where HELMET has one (kilt/, msmarco/);
the Hub-only sets (ICL, NarrativeQA, InfiniteBench, Multi-LexSum) are read from JSONL exports. A missing
file raises a UserError naming the path and the row format expected.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from prolong.errors import UserError
from prolong.eval import protocol as P

HELMET_LENGTHS = [4096, 8192, 16384, 32768, 65536, 131072]
RAG_PASSAGES = [20, 50, 105, 220, 440, 1000]
RERANK_PASSAGES = [14, 50, 130, 285, 600, 1000]
ICL_SHOTS = {
    "trec_coarse": [200, 400, 800, 1600, 3300, 6600],
    "trec_fine": [200, 400, 800, 1600, 3200, 6400],
    "banking77": [180, 360, 720, 1450, 2900, 5900],
    "clinic150": [220, 440, 880, 1750, 3525, 7050],
    "nlu": [250, 510, 1020, 2040, 4080, 8296],
}
RAG_FILES = {  # HELMET data/kilt names: (test pattern, demo file)
    "nq": ("kilt/nq-dev-multikilt_1000_k{k}_dep6.jsonl", "kilt/nq-train-multikilt_1000_k3_dep6.jsonl"),
    "tqa": ("kilt/triviaqa-dev-multikilt_1000_k{k}_dep6.jsonl", "kilt/triviaqa-train-multikilt_1000_k3_dep6.jsonl"),
    "hotpotqa": ("kilt/hotpotqa-dev-multikilt_1000_k{k}_dep3.jsonl",
                 "kilt/hotpotqa-train-multikilt_1000_k3_dep3.jsonl"),
    "popqa": ("kilt/popqa_test_1000_k{k}_dep6.jsonl", "kilt/popqa_test_1000_k3_dep6.jsonl"),
}
RERANK_FILES = ("msmarco/test_reranking_data_k{k}_dep3.jsonl", "msmarco/test_reranking_data_k10_dep3.jsonl")

FORMATS = {
    "rag": 'one JSON object per line: {"question": str, "answers": [str], "ctxs": [{"title": str, "text": str}]}',
    "rerank": 'one JSON object per line: {"qid": str, "query": str, '
              '"ctxs": [{"id": str, "text": str, "title": str (optional), "label": int}]}',
    "icl": 'one JSON object per line: {"text": str, "label": int or str}',
    "narrativeqa": 'one JSON object per line: {"context": str, "question": str, "answers": [str]}',
    "infbench": 'InfiniteBench rows: {"context": str, "input": str, "answer": [str], "options": [str] (choice)}',
    "multi_lexsum": 'one JSON object per line: {"context": str (or "sources": [str]), "summary": str}',
}

# InfiniteBench templates as HELMET writes them (not quoted in specs/eval-protocol.md).
INFBENCH_QA_TEMPLATE = (
    "You are given a book and a question. Answer the question as concisely as you can, using a single phrase "
    "if possible.\n\n{demo}{context}\n\nQuestion: {question}\nAnswer:"
)
INFBENCH_CHOICE_TEMPLATE = (
    "You are given a book and a multiple choice question. Choose the correct option and give your answer in "
    "the format of 'Answer: [option]'.\n\n{demo}{context}\n\nQuestion: {question}\n{options}\nAnswer:"
)
INFBENCH_SUM_TEMPLATE = (
    "You are given a book and you are tasked to summarize it. Write a summary of about 1000 to 1200 words. "
    "Only write about the plot and characters of the story. Do not discuss the themes or background of the "
    "book. Do not provide any analysis or commentary.\n\n{demo}{context}\n\nNow summarize the book.\nSummary:"
)


def per_length(table: list[int], length: int) -> int:
    """HELMET's number for the largest tabulated length not above `length` (the first below 4K)."""
    index = max([i for i, n in enumerate(HELMET_LENGTHS) if n <= length], default=0)
    return table[index]


def read_jsonl(path: Path, kind: str) -> list[dict[str, Any]]:
    """Rows of a JSONL file (read by prolong.data.text_files); a UserError naming the file and line, and
    the row format expected, when it is missing, empty or not JSONL."""
    from prolong.data.text_files import jsonl_records

    if not path.exists():
        raise UserError(f"missing data file {path}; expected {FORMATS[kind]}")
    try:
        rows = [row for _, row in jsonl_records(path)]
    except UserError as error:
        raise UserError(f"{error}; expected {FORMATS[kind]}") from None
    if not rows:
        raise UserError(f"{path} holds no rows; expected {FORMATS[kind]}")
    return rows


def _require(row: dict[str, Any], keys: tuple[str, ...], path: Path, kind: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise UserError(f"{path}: rows lack {missing}; expected {FORMATS[kind]}")


def _sample(rows: list[dict[str, Any]], n: int, rng: random.Random) -> list[dict[str, Any]]:
    return rows if len(rows) <= n else rng.sample(rows, n)


# ---------------------------------------------------------------- RAG


def _passage(ctx: dict[str, Any]) -> str:
    return f"Document (Title: {ctx.get('title', '')}): {ctx['text']}"


def rag(name: str, data_dir: Path, length: int, num_examples: int, seed: int) -> list[P.Example]:
    """HELMET RAG (kilt_nq, kilt_triviaqa, kilt_hotpotqa, kilt_popqa): passages per length, 2 demos."""
    test_pattern, demo_name = RAG_FILES[name]
    k = per_length(RAG_PASSAGES, length)
    test_path, demo_path = data_dir / test_pattern.format(k=k), data_dir / demo_name
    rows, demo_rows = read_jsonl(test_path, "rag"), read_jsonl(demo_path, "rag")
    _require(rows[0], ("question", "answers", "ctxs"), test_path, "rag")
    rng = random.Random(f"{seed}/rag_{name}/{length}")
    examples = []
    for i, row in enumerate(_sample(rows, num_examples, rng)):
        shots = rng.sample([d for d in demo_rows if d["question"] != row["question"]], 2)
        demos = "".join(
            "\n\n".join(_passage(c) for c in d["ctxs"][:3]) + f"\n\nQuestion: {d['question']}\nAnswer: {d['answers'][0]}\n\n"
            for d in shots
        )
        template = P.fill(P.RAG_TEMPLATE, demos=demos, question=row["question"])
        context = "\n\n".join(_passage(c) for c in row["ctxs"][:k])
        examples.append(P.Example(f"rag_{name}-{i}", template, context, P.RAG_PREFIX, list(row["answers"])))
    return examples


# ---------------------------------------------------------------- re-rank


def _rerank_passage(ctx: dict[str, Any]) -> str:
    if ctx.get("title"):
        return f"[ID: {ctx['id']}] Document (Title: {ctx['title']}): {ctx['text']}"
    return f"[ID: {ctx['id']}] Document: {ctx['text']}"


def rerank(data_dir: Path, length: int, num_examples: int, seed: int) -> list[P.Example]:
    """HELMET MS MARCO re-ranking: rank passages by relevance, scored by nDCG@10 against graded labels."""
    k = per_length(RERANK_PASSAGES, length)
    test_path, demo_path = data_dir / RERANK_FILES[0].format(k=k), data_dir / RERANK_FILES[1]
    rows, demo_rows = read_jsonl(test_path, "rerank"), read_jsonl(demo_path, "rerank")
    _require(rows[0], ("qid", "query", "ctxs"), test_path, "rerank")
    rng = random.Random(f"{seed}/rerank_msmarco/{length}")
    examples = []
    for i, row in enumerate(_sample(rows, num_examples, rng)):
        shots = rng.sample([d for d in demo_rows if d["qid"] != row["qid"]], 2)
        demos = ""
        for d in shots:
            ranked = sorted(d["ctxs"], key=lambda c: -int(c["label"]))
            demos += "\n\n".join(_rerank_passage(c) for c in d["ctxs"])
            demos += f"\n\nQuery: {d['query']}\nRanking: {' > '.join(str(c['id']) for c in ranked)}\n\n"
        template = P.fill(P.RERANK_TEMPLATE, demos=demos, question=row["query"])
        context = "\n\n".join(_rerank_passage(c) for c in row["ctxs"][:k])
        qrels = {str(c["id"]): int(c["label"]) for c in row["ctxs"][:k]}
        examples.append(P.Example(f"rerank-{row['qid']}", template, context, P.RERANK_PREFIX, [],
                                  {"qid": str(row["qid"]), "qrels": qrels}))
    return examples


# ---------------------------------------------------------------- ICL


def balanced_demos(rows: list[dict[str, Any]], shots: int, rng: random.Random) -> list[dict[str, Any]]:
    """Round-robin one demo per label per round (label order shuffled in each round) until `shots`."""
    by_label: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    pools = {label: rng.sample(items, len(items)) for label, items in by_label.items()}
    demos: list[dict[str, Any]] = []
    while len(demos) < shots and any(pools.values()):
        labels = [label for label in sorted(pools, key=str) if pools[label]]
        rng.shuffle(labels)
        for label in labels[: shots - len(demos)]:
            demos.append(pools[label].pop())
    return demos


def label_mapping(labels: list[Any], rng: random.Random) -> dict[Any, int]:
    """Abstract labels: each original label -> a position in a random permutation of 0..C-1."""
    ordered = sorted(set(labels), key=str)
    permutation = list(range(len(ordered)))
    rng.shuffle(permutation)
    return dict(zip(ordered, permutation))


def icl(name: str, data_dir: Path, length: int, num_examples: int, seed: int) -> list[P.Example]:
    """HELMET ICL: class-balanced demonstrations with abstract numeric labels (EM on `label: N`)."""
    train_path, test_path = data_dir / f"icl/{name}_train.jsonl", data_dir / f"icl/{name}_test.jsonl"
    train, test = read_jsonl(train_path, "icl"), read_jsonl(test_path, "icl")
    _require(train[0], ("text", "label"), train_path, "icl")
    shots = per_length(ICL_SHOTS[name], length)
    rng = random.Random(f"{seed}/icl_{name}/{length}")
    all_labels = [r["label"] for r in train]
    examples = []
    for i, row in enumerate(_sample(test, num_examples, rng)):
        mapping = label_mapping(all_labels, rng)
        demos = balanced_demos(train, shots, rng)
        context = "\n\n".join(f"{d['text']}\nlabel: {mapping[d['label']]}" for d in demos)
        template = P.fill(P.ICL_TEMPLATE, question=row["text"])
        examples.append(P.Example(f"icl_{name}-{i}", template, context, P.ICL_PREFIX, [str(mapping[row["label"]])],
                                  {"original_label": str(row["label"])}))
    return examples


# ---------------------------------------------------------------- long QA and summarization


def _long_doc_examples(task: str, rows: list[dict[str, Any]], num_examples: int, seed: int, length: int,
                       make: Any) -> list[P.Example]:
    rng = random.Random(f"{seed}/{task}/{length}")
    return [make(i, row) for i, row in enumerate(_sample(rows, num_examples, rng))]


def narrativeqa(data_dir: Path, length: int, num_examples: int, seed: int) -> list[P.Example]:
    """NarrativeQA: answer a question about a whole book or script."""
    path = data_dir / "narrativeqa/test.jsonl"
    rows = read_jsonl(path, "narrativeqa")
    _require(rows[0], ("context", "question", "answers"), path, "narrativeqa")
    return _long_doc_examples("narrativeqa", rows, num_examples, seed, length, lambda i, r: P.Example(
        f"narrativeqa-{i}", P.fill(P.NARRATIVEQA_TEMPLATE, demo="", question=r["question"]), r["context"],
        P.RAG_PREFIX, list(r["answers"]), {"question": r["question"]}))


def infbench(kind: str, data_dir: Path, length: int, num_examples: int, seed: int) -> list[P.Example]:
    """InfiniteBench longbook QA ('qa'), multiple choice ('choice') or summarization ('sum'), English."""
    path = data_dir / f"infbench/longbook_{kind}_eng.jsonl"
    rows = read_jsonl(path, "infbench")
    _require(rows[0], ("context", "answer"), path, "infbench")

    def make(i: int, r: dict[str, Any]) -> P.Example:
        answers = r["answer"] if isinstance(r["answer"], list) else [r["answer"]]
        if kind == "sum":
            return P.Example(f"infbench_sum-{i}", P.fill(INFBENCH_SUM_TEMPLATE, demo=""), r["context"],
                             P.SUMMARY_PREFIX, answers)
        if kind == "choice":
            letters = "ABCD"
            options = "\n".join(f"{letters[j]}. {o}" for j, o in enumerate(r["options"]))
            letter = next((letters[r["options"].index(a)] for a in answers if a in r["options"]), "")
            template = P.fill(INFBENCH_CHOICE_TEMPLATE, demo="", question=r["input"], options=options)
            return P.Example(f"infbench_choice-{i}", template, r["context"], P.RAG_PREFIX, answers,
                             {"gold_letter": letter})
        template = P.fill(INFBENCH_QA_TEMPLATE, demo="", question=r["input"])
        return P.Example(f"infbench_qa-{i}", template, r["context"], P.RAG_PREFIX, answers, {"question": r["input"]})

    return _long_doc_examples(f"infbench_{kind}", rows, num_examples, seed, length, make)


def multi_lexsum(data_dir: Path, length: int, num_examples: int, seed: int) -> list[P.Example]:
    """Multi-LexSum: one-paragraph summary of a civil rights case from its legal documents."""
    path = data_dir / "multi_lexsum/test.jsonl"
    rows = read_jsonl(path, "multi_lexsum")
    _require(rows[0], ("summary",), path, "multi_lexsum")

    def make(i: int, r: dict[str, Any]) -> P.Example:
        context = r["context"] if "context" in r else "\n\n".join(r["sources"])
        return P.Example(f"multi_lexsum-{i}", P.fill(P.MULTI_LEXSUM_TEMPLATE, demo=""), context,
                         P.SUMMARY_PREFIX, [r["summary"]], {"keypoints": r.get("keypoints", [])})

    return _long_doc_examples("multi_lexsum", rows, num_examples, seed, length, make)
