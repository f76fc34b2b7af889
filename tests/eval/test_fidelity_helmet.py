"""Our prompts and scores equal HELMET's own, on the fixtures its code produced (tests/fixtures/helmet/).

tests/fixtures/helmet/prompts.json holds, per task, the user text, system text, base prompt and the token ids
(base and chat, truncated to max_length - generation_max_length) that HELMET's data.py and model_utils.tokenize
built from fixed inputs with the test tokenizer; metrics.json holds HELMET's post-processing scores of tricky
outputs. See tests/fixtures/helmet/README.md for how they were made.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from prolong.eval import helmet_files as H
from prolong.eval import metrics as M
from prolong.eval import protocol as P
from prolong.eval import synthetic as S
from prolong.eval.tasks import TASKS, score

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "helmet"
PROMPTS = json.loads((FIXTURES / "prompts.json").read_text())
METRICS = json.loads((FIXTURES / "metrics.json").read_text())


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _assert_same(tokenizer, examples: list[P.Example], task: str) -> None:
    """Every example renders HELMET's prompt, and truncates to HELMET's ids, base and chat."""
    fixture = PROMPTS["tasks"][task]
    samples = fixture["samples"]
    assert len(examples) == len(samples), task
    for example, sample in zip(examples, samples, strict=True):
        budget = sample["max_length"] - fixture["generation_max_length"]
        assert example.user_text() == sample["user"], task
        assert example.answer_prefix == sample["system"], task
        assert example.user_text() + example.separator + example.answer_prefix == sample["prompt"], task
        assert P.truncate_context(tokenizer, example, False, budget)[0] == sample["base_ids"], task
        assert P.truncate_context(tokenizer, example, True, budget)[0] == sample["chat_ids"], task


@pytest.mark.parametrize("name", ["nq", "popqa"])
def test_rag_prompts(tmp_path, tokenizer, name: str) -> None:
    inputs = PROMPTS["inputs"][f"rag_{name}"]
    test_pattern, demo_name = H.RAG_FILES[name]
    _write(tmp_path / test_pattern.format(k=20), inputs["test"])
    _write(tmp_path / demo_name, inputs["demos"])
    examples = H.rag(name, tmp_path, 4096, PROMPTS["tasks"][f"rag_{name}"]["max_test_samples"], 42)
    _assert_same(tokenizer, examples, f"rag_{name}")
    for example, sample in zip(examples, PROMPTS["tasks"][f"rag_{name}"]["samples"], strict=True):
        assert example.answers == sample["answer"]


def test_rerank_prompts(tmp_path, tokenizer) -> None:
    inputs = PROMPTS["inputs"]["rerank"]
    _write(tmp_path / H.RERANK_FILES[0].format(k=14), inputs["test"])
    _write(tmp_path / H.RERANK_FILES[1], inputs["demos"])
    examples = H.rerank(tmp_path, 4096, PROMPTS["tasks"]["rerank"]["max_test_samples"], 42)
    _assert_same(tokenizer, examples, "rerank")


def test_icl_prompts(tmp_path, tokenizer) -> None:
    inputs = PROMPTS["inputs"]["icl"]
    for split in ("train", "test"):
        _write(tmp_path / f"icl/trec_coarse_{split}.jsonl",
               [{"text": r["text"], "label": r["coarse_label"]} for r in inputs[split]])
    fixture = PROMPTS["tasks"]["icl_trec_coarse"]
    examples = H.icl("trec_coarse", tmp_path, 4096, fixture["max_test_samples"], 42, shots=14)
    _assert_same(tokenizer, examples, "icl_trec_coarse")
    assert [e.answers[0] for e in examples] == [s["answer"] for s in fixture["samples"]]


def test_long_document_prompts(tmp_path, tokenizer) -> None:
    """NarrativeQA, Multi-LexSum and InfiniteBench, with HELMET's pre-truncation (to 400 / 300 tokens here)."""
    doc = PROMPTS["inputs"]["narrativeqa_doc"]
    book = " ".join([doc] * PROMPTS["inputs"]["narrativeqa_repeat"])  # HELMET keeps books > 128K tokens
    _write(tmp_path / "narrativeqa/test.jsonl",
           [{"context": f"Story {i}. " + book, "question": f"Who is hero {i}?", "answers": [f"hero {i}", f"the hero {i}"]}
            for i in range(4)])
    _write(tmp_path / "multi_lexsum/test.jsonl",
           [{"sources": [f"Source {i}a. " + doc, f"Source {i}b."], "summary": f"Case {i} settled."} for i in range(4)])
    for kind, rows in (("qa", "longbook_qa_eng"), ("choice", "longbook_choice_eng"), ("sum", "longbook_sum_eng")):
        _write(tmp_path / f"infbench/longbook_{kind}_eng.jsonl", PROMPTS["inputs"]["infbench"][rows])
    cases = [
        ("narrativeqa", H.narrativeqa(tmp_path, 1024, 3, 42, shots=0), 400),
        ("multi_lexsum", H.multi_lexsum(tmp_path, 1024, 3, 42, shots=0), 300),
        ("infbench_qa", H.infbench("qa", tmp_path, 1024, 2, 42), 400),
        ("infbench_choice", H.infbench("choice", tmp_path, 1024, 2, 42), 400),
        ("infbench_sum", H.infbench("sum", tmp_path, 1024, 2, 42), 300),
    ]
    done: dict[str, list[P.Example]] = {}
    for task, examples, limit in cases:
        cut = [P.Example(e.id, e.template, P.pretruncate_context(tokenizer, e.context, limit), e.answer_prefix,
                         e.answers, e.meta, e.separator) for e in examples]
        _assert_same(tokenizer, cut, task)
        done[task] = cut
        answers = [s["answer"] if isinstance(s["answer"], list) else [s["answer"]]
                   for s in PROMPTS["tasks"][task]["samples"]]
        assert [e.answers for e in cut] == answers, task
    _assert_same(tokenizer, done["narrativeqa"], "narrativeqa_cut")  # the prompt cut again by HELMET's tokenize


def test_synthetic_templates(tokenizer) -> None:
    """JSON KV and RULER rows (HELMET's file format) render as HELMET's load_json_kv / load_ruler render them."""
    kv = PROMPTS["tasks"]["json_kv"]["samples"][0]
    pairs = [("k1", "v1"), ("k2", "v2"), ("k3", "v3")]
    example = S.json_kv_example("kv", pairs, 1, [0, 2])
    assert example.user_text() == kv["user"] and example.answer_prefix == kv["system"]
    assert example.context == kv["context"]
    rows = {
        "ruler_niah_s_1": S.niah_example("a", "ruler_niah_s_1", "noise\nOne of the special magic numbers for "
                                         "big-cat is: 1234567.", "big-cat", ["1234567"]),
        "ruler_niah_mk_3": S.niah_example("b", "ruler_niah_mk_3", "x", "5d3f", ["aa-bb"]),
        "ruler_niah_mv": S.niah_example("c", "ruler_niah_mv", "y", "red-fox", ["1", "2"]),
        "ruler_niah_mq": S.niah_example("d", "ruler_niah_mq", "z", "a-b, c-d, and e-f", ["1", "2", "3"]),
        "ruler_vt": S.vt_example("e", "VAR ABCDE = 12345", "12345", 5, "worked example", ["ABCDE"]),
        "ruler_cwe": S.cwe_example("f", "1. apple 2. pear", "worked example", ["apple"]),
        "ruler_fwe": S.fwe_example("g", "abc ... abc", ["abc"]),
    }
    for task, example in rows.items():
        sample = PROMPTS["tasks"][task]["samples"][0]
        assert example.user_text() == sample["user"], task
        assert example.answer_prefix == sample["system"], task
        assert P.prompt_ids(tokenizer, example, False) == sample["base_ids"], task


# ---------------------------------------------------------------- metrics


def _close(ours: dict[str, float], theirs: dict[str, Any]) -> None:
    for name, value in theirs.items():
        if name in ("parsed",):
            continue
        assert ours[name] == pytest.approx(float(value), abs=1e-9), name


@pytest.mark.parametrize("row", METRICS["tricky"], ids=lambda r: repr(r["output"])[:30])
def test_answer_metrics_equal_helmet(row: dict[str, Any]) -> None:
    output, answers = row["output"], row["answers"]
    assert M.parse_output(output) == row["default"]["parsed"]
    for prefix, parsed in row["parse_output"].items():
        assert M.parse_output(output, prefix) == parsed, prefix
    _close(M.answer_metrics(output, answers), row["calculate_metrics"])
    _close(M.qa_metrics(output, answers), row["default"])  # RAG, NarrativeQA, InfiniteBench QA/Sum
    _close(M.qa_metrics(output, answers, TASKS["json_kv"].parse_prefix), row["json_kv"])
    example = P.Example("x", "{context}", "", "", answers)
    if "icl" in row:
        _close(score(TASKS["icl_trec_coarse"], output, example, chat=True), row["icl"])
    if "infbench_choice" in row:
        _close(score(TASKS["infbench_choice"], output, example, chat=True), row["infbench_choice"])


@pytest.mark.parametrize("row", METRICS["rankings"], ids=lambda r: repr(r["output"])[:30])
def test_rankings_equal_helmet(row: dict[str, Any]) -> None:
    ranking = M.parse_ranking(row["output"])
    assert ranking == row["parsed"]
    assert M.ndcg_at_10(ranking, METRICS["qrels"], "q") == pytest.approx(row["NDCG@10"], abs=1e-12)
    example = P.Example("x", "{context}", "", "", [], {"qrels": METRICS["qrels"], "qid": "q"})
    metrics = score(TASKS["rerank_msmarco"], row["output"], example, chat=True)
    assert metrics["num_ranked"] == row["num_preds"]


def test_ruler_recall_equals_helmet() -> None:
    for row in METRICS["ruler"]:
        example = P.Example("x", "{context}", "", "", row["answers"])
        assert score(TASKS["ruler_niah_mv"], row["output"], example, chat=True)["ruler_recall"] == \
            pytest.approx(row["ruler_recall"])


def test_fixture_covers_the_tricky_cases() -> None:
    assert len(METRICS["tricky"]) + len(METRICS["rankings"]) + len(METRICS["ruler"]) >= 40
    assert any(r["output"] == "" for r in METRICS["tricky"]) and any(len(r["answers"]) > 1 for r in METRICS["tricky"])
