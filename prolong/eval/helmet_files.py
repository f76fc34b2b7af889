"""HELMET tasks read from local JSONL files: RAG, re-rank, ICL, long QA, summarization.

File names under `data_dir` follow HELMET's download layout where HELMET has one (kilt/, msmarco/);
the Hub-only sets (ICL, NarrativeQA, InfiniteBench, Multi-LexSum) are read from JSONL exports. A missing
file raises a UserError naming the path and the row format expected.
"""

from __future__ import annotations

import hashlib
import math
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


def hf_shuffle(n: int, seed: int) -> list[int]:
    """The row order of Hugging Face `Dataset.shuffle(seed=seed)`: numpy's default_rng permutation."""
    import numpy as np

    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def sha_seed(text: str) -> int:
    """HELMET's per-example seed: sha256 of the text, modulo 2**31."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) % 2**31


def select_by_key(rows: list[dict[str, Any]], key: str, n: int, seed: int) -> list[dict[str, Any]]:
    """HELMET's test sampling: `n` keys drawn by random.seed(seed); random.sample(sorted keys), file order kept."""
    keys = sorted({row[key] for row in rows})
    chosen = set(random.Random(seed).sample(keys, min(n, len(keys))))
    return [row for row in rows if row[key] in chosen]


def shuffled_head(rows: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """`Dataset.shuffle(seed).select(range(n))`: the first n rows of the seeded permutation."""
    return [rows[i] for i in hf_shuffle(len(rows), seed)[:n]]


def _first_distinct(rows: list[dict[str, Any]], order: list[int], key: str, n: int) -> list[dict[str, Any]]:
    """The first `n` rows in `order` with distinct `key` (HELMET's drop_duplicates then select)."""
    out, seen = [], set()
    for i in order:
        if rows[i][key] not in seen:
            seen.add(rows[i][key])
            out.append(rows[i])
    return out[:n]


# ---------------------------------------------------------------- RAG


def _passage(ctx: dict[str, Any]) -> str:
    return f"Document (Title: {ctx.get('title', '')}): {ctx['text']}"


def rag(name: str, data_dir: Path, length: int, num_examples: int, seed: int, shots: int = 2) -> list[P.Example]:
    """HELMET RAG (kilt_nq, kilt_triviaqa, kilt_hotpotqa, kilt_popqa_3): passages per length, 2 demos."""
    test_pattern, demo_name = RAG_FILES[name]
    k = per_length(RAG_PASSAGES, length)
    test_path, demo_path = data_dir / test_pattern.format(k=k), data_dir / demo_name
    rows, demo_rows = read_jsonl(test_path, "rag"), read_jsonl(demo_path, "rag")
    _require(rows[0], ("question", "answers", "ctxs"), test_path, "rag")
    if name == "popqa" and "s_pop" in rows[0]:  # HELMET's kilt_popqa_3: log10 popularity below 3
        rows = [r for r in rows if math.log10(r["s_pop"]) < 3]
        demo_rows = [r for r in demo_rows if math.log10(r["s_pop"]) < 3]
    key = "id" if "id" in rows[0] else "question"
    examples = []
    for i, row in enumerate(select_by_key(rows, key, num_examples, seed)):
        # popqa has one split: its demos exclude the question itself.
        pool = [d for d in demo_rows if d[key] != row[key]] if name == "popqa" else demo_rows
        picked = _first_distinct(pool, hf_shuffle(len(pool), sha_seed(str(row[key]))), key, shots)
        demos = "\n\n".join(
            "\n\n".join(_passage(c) for c in d["ctxs"]) + f"\n\nQuestion: {d['question']}\nAnswer: {d['answers'][0]}"
            for d in picked
        ) + ("\n\n" if picked else "")
        template = P.fill(P.RAG_TEMPLATE, demos=demos, question=row["question"])
        context = "\n\n".join(_passage(c) for c in row["ctxs"][:k])
        examples.append(P.Example(f"rag_{name}-{i}", template, context, P.RAG_PREFIX, list(row["answers"])))
    return examples


# ---------------------------------------------------------------- re-rank


def _rerank_passage(ctx: dict[str, Any], titled: bool) -> str:
    if titled:
        return f"[ID: {ctx['id']}] Document (Title: {ctx['title']}): {ctx['text']}"
    return f"[ID: {ctx['id']}] Document: {ctx['text']}"


def rerank(data_dir: Path, length: int, num_examples: int, seed: int, shots: int = 2) -> list[P.Example]:
    """HELMET MS MARCO re-ranking: rank passages by relevance, scored by nDCG@10 against graded labels."""
    k = per_length(RERANK_PASSAGES, length)
    test_path, demo_path = data_dir / RERANK_FILES[0].format(k=k), data_dir / RERANK_FILES[1]
    rows, demo_rows = read_jsonl(test_path, "rerank"), read_jsonl(demo_path, "rerank")
    _require(rows[0], ("qid", "query", "ctxs"), test_path, "rerank")
    rows = select_by_key(rows, "qid", num_examples, seed)
    # HELMET drops the test queries from a large demo file once, else per query.
    filtered = len(demo_rows) > 2 * len(rows)
    if filtered:
        test_qids = {r["qid"] for r in rows}
        demo_rows = [d for d in demo_rows if d["qid"] not in test_qids]
    examples = []
    for row in rows:
        titled = "title" in row["ctxs"][0]
        pool = demo_rows if filtered else [d for d in demo_rows if d["qid"] != row["qid"]]
        picked = _first_distinct(pool, hf_shuffle(len(pool), sha_seed(str(row["qid"]))), "qid", shots)
        demos = ""
        for d in picked:
            ranked = sorted(d["ctxs"], key=lambda c: c["label"], reverse=True)
            demos += "\n\n".join(_rerank_passage(c, titled) for c in d["ctxs"])
            demos += f"\n\nQuery: {d['query']}\nRanking: {' > '.join(str(c['id']) for c in ranked)}\n\n"
        template = P.fill(P.RERANK_TEMPLATE, demos=demos, question=row["query"])
        context = "\n\n".join(_rerank_passage(c, titled) for c in row["ctxs"][:k])
        qrels = {str(c["id"]): int(c["label"]) for c in row["ctxs"][:k]}
        examples.append(P.Example(f"rerank-{row['qid']}", template, context, P.RERANK_PREFIX, [],
                                  {"qid": str(row["qid"]), "qrels": qrels}))
    return examples


# ---------------------------------------------------------------- ICL

# HELMET's label counts (the random label permutation covers all of them).
ICL_NUM_LABELS = {"trec_coarse": 6, "trec_fine": 50, "banking77": 77, "clinic150": 151, "nlu": 68}


def balanced_demos(rows: list[dict[str, Any]], shots: int, seed: int) -> list[dict[str, Any]]:
    """HELMET's balance_labels: ceil(shots / labels) rounds with one row per label, shuffled in each round.

    Labels in order of first appearance; per label, row indices drawn with random.Random(seed) (a first draw
    of rounds % len rows, topped up by draws without replacement), then each round shuffled; first `shots`.
    """
    rand = random.Random(seed)
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["label"]].append(row)
    rounds = math.ceil(shots / len(groups))
    per_round: list[list[dict[str, Any]]] = [[] for _ in range(rounds)]
    for samples in groups.values():
        picks = rand.sample(range(len(samples)), rounds % len(samples))
        while len(picks) < rounds:
            picks += rand.sample(range(len(samples)), min(rounds - len(picks), len(samples)))
        for r, index in enumerate(picks):
            per_round[r].append(samples[index])
    for items in per_round:
        rand.shuffle(items)
    return [row for items in per_round for row in items][:shots]


def label_mapping(num_labels: int, seed: int) -> list[int]:
    """Abstract labels: label i is shown as permutation[i] (HELMET: random.seed(seed); random.shuffle)."""
    permutation = list(range(num_labels))
    random.Random(seed).shuffle(permutation)
    return permutation


def _label_ids(train: list[dict[str, Any]], test: list[dict[str, Any]]) -> tuple[list, list, int]:
    """Rows with integer labels; string labels get the index of their sorted order (not HELMET's ids)."""
    if all(isinstance(r["label"], int) for r in train + test):
        return train, test, max(r["label"] for r in train + test) + 1
    names = sorted({str(r["label"]) for r in train + test})
    index = {n: i for i, n in enumerate(names)}
    relabel = [[{**r, "label": index[str(r["label"])]} for r in rows] for rows in (train, test)]
    return relabel[0], relabel[1], len(names)


def icl(name: str, data_dir: Path, length: int, num_examples: int, seed: int,
        shots: int | None = None) -> list[P.Example]:
    """HELMET ICL: class-balanced demonstrations with abstract numeric labels (EM on `label: N`).

    `shots` defaults to HELMET's count for the length.
    """
    train_path, test_path = data_dir / f"icl/{name}_train.jsonl", data_dir / f"icl/{name}_test.jsonl"
    train, test = read_jsonl(train_path, "icl"), read_jsonl(test_path, "icl")
    _require(train[0], ("text", "label"), train_path, "icl")
    train, test, seen_labels = _label_ids(train, test)
    num_labels = max(ICL_NUM_LABELS.get(name, 0), seen_labels)
    shots = per_length(ICL_SHOTS[name], length) if shots is None else shots
    if len(test) > num_examples:  # HELMET: shuffle, then draw a label-balanced test set
        test = balanced_demos(shuffled_head(test, len(test), seed), num_examples, seed)
    examples = []
    for i, row in enumerate(test):
        local_seed = (int(hashlib.sha256(row["text"].encode("utf-8")).hexdigest(), 16) + seed) % 2**31
        demos = balanced_demos(train, shots, local_seed)
        mapping = label_mapping(num_labels, local_seed)
        context = "\n\n".join(f"{d['text']}\nlabel: {mapping[d['label']]}" for d in demos)
        template = P.fill(P.ICL_TEMPLATE, question=row["text"])
        examples.append(P.Example(f"icl_{name}-{i}", template, context, P.ICL_PREFIX, [str(mapping[row["label"]])],
                                  {"original_label": str(row["label"])}))
    return examples


# ---------------------------------------------------------------- long QA and summarization


def _demo_rows(path: Path, kind: str) -> list[dict[str, Any]] | None:
    return read_jsonl(path, kind) if path.exists() else None


def _pick(rows: list[dict[str, Any]], n: int, rng: random.Random) -> list[dict[str, Any]]:
    return rows if len(rows) <= n else rng.sample(rows, n)


def narrativeqa(data_dir: Path, length: int, num_examples: int, seed: int, shots: int = 2) -> list[P.Example]:
    """NarrativeQA: answer a question about a whole book or script (2 demos from narrativeqa/train.jsonl)."""
    path = data_dir / "narrativeqa/test.jsonl"
    rows = read_jsonl(path, "narrativeqa")
    _require(rows[0], ("context", "question", "answers"), path, "narrativeqa")
    train = _demo_rows(data_dir / "narrativeqa/train.jsonl", "narrativeqa")
    rng = random.Random(f"{seed}/narrativeqa/{length}")  # HELMET draws these demos unseeded
    examples = []
    for i, r in enumerate(shuffled_head(rows, num_examples, seed)):
        demo = ""
        if train and shots:
            demo = ("For example:\n\n" + "\n\n".join(f"Question: {d['question']}\nAnswer: {d['answers'][0]}"
                                                     for d in _pick(train, shots, rng))
                    + "\n\nNow, use the following story to answer the question:\n\n")
        template = P.fill(P.NARRATIVEQA_TEMPLATE, demo=demo, question=r["question"])
        examples.append(P.Example(f"narrativeqa-{i}", template, r["context"], P.RAG_PREFIX, list(r["answers"]),
                                  {"question": r["question"], "shots": shots if demo else 0}))
    return examples


def _infbench_demo(kind: str, rows: list[dict[str, Any]]) -> str:
    if kind == "qa":
        text = "\n\n".join(f"[story text]\nQuestion: {r['input']}\nAnswer: {r['answers'][0]}" for r in rows)
    elif kind == "choice":
        text = "\n\n".join(f"[story text]\nQuestion: {r['input']}\nOptions:\n{r['options_text']}\n"
                           f"Answer: {r['answers'][0]}" for r in rows)
    else:
        text = "\n\n".join(f"[story text]\nSummary: {r['answers'][0].strip()}" for r in rows)
    return f"For example:\n\n{text}\n\nNow, read the following story:\n\n"


def infbench(kind: str, data_dir: Path, length: int, num_examples: int, seed: int, shots: int = 2) -> list[P.Example]:
    """InfiniteBench longbook QA ('qa'), multiple choice ('choice') or summarization ('sum'), English."""
    path = data_dir / f"infbench/longbook_{kind}_eng.jsonl"
    rows = read_jsonl(path, "infbench")
    _require(rows[0], ("context", "answer"), path, "infbench")
    prepared = []
    for index, r in enumerate(rows):
        answers = r["answer"] if isinstance(r["answer"], list) else [r["answer"]]
        item = {**r, "id": r.get("id", index), "answers": answers}
        if kind == "choice":  # HELMET: answers = [letter, "letter. option"]
            letter = chr(ord("A") + r["options"].index(answers[0]))
            item["options_text"] = "A. {}\nB. {}\nC. {}\nD. {}".format(*r["options"])
            item["answers"] = [letter, f"{letter}. {answers[0]}"]
        prepared.append(item)
    template = {"qa": P.INFBENCH_QA_TEMPLATE, "choice": P.INFBENCH_CHOICE_TEMPLATE, "sum": P.INFBENCH_SUM_TEMPLATE}
    examples = []
    for r in shuffled_head(prepared, num_examples, seed):
        pool = [x for x in prepared if x["id"] != r["id"]]
        demo = _infbench_demo(kind, [pool[j] for j in hf_shuffle(len(pool), seed)[:shots]]) if shots else ""
        fields = {"demo": demo, "question": r.get("input", "")}
        if kind == "choice":
            fields["options"] = r["options_text"]
        prefix = P.SUMMARY_PREFIX if kind == "sum" else P.RAG_PREFIX
        examples.append(P.Example(f"infbench_{kind}-{r['id']}", P.fill(template[kind], **fields), r["context"],
                                  prefix, r["answers"], {"question": r.get("input", "")},
                                  separator=P.LONG_SEPARATOR))
    return examples


def multi_lexsum(data_dir: Path, length: int, num_examples: int, seed: int, shots: int = 2) -> list[P.Example]:
    """Multi-LexSum: one-paragraph summary of a civil rights case (2 demos from multi_lexsum/train.jsonl)."""
    path = data_dir / "multi_lexsum/test.jsonl"
    rows = read_jsonl(path, "multi_lexsum")
    _require(rows[0], ("summary",), path, "multi_lexsum")
    train = _demo_rows(data_dir / "multi_lexsum/train.jsonl", "multi_lexsum")
    rng = random.Random(f"{seed}/multi_lexsum/{length}")  # HELMET draws these demos unseeded
    if len(rows) > num_examples:
        rows = shuffled_head(rows, num_examples, seed)
    examples = []
    for i, r in enumerate(rows):
        demo = ""
        if train and shots:
            demo = ("Example summaries:\n\n" + "\n\n".join(f"Summary: {d['summary']}" for d in _pick(train, shots, rng))
                    + "\n\nNow, write a summary of the following legal documents.\n")
        context = r["context"] if "context" in r else "\n\n".join(r["sources"])
        examples.append(P.Example(f"multi_lexsum-{i}", P.fill(P.MULTI_LEXSUM_TEMPLATE, demo=demo), context,
                                  P.SUMMARY_PREFIX, [r["summary"]],
                                  {"keypoints": r.get("keypoints", []), "shots": shots if demo else 0},
                                  separator=P.LONG_SEPARATOR))
    return examples
