"""A tiny model over the synthetic suite at two lengths writes JSON, tables and plots; reruns skip work."""

from __future__ import annotations

import json

import pytest

from prolong.config import EvalSpec
from prolong.eval import run_eval
from prolong.eval.tasks import SYNTHETIC_TASKS


def test_synthetic_suite_end_to_end(model_dir, tmp_path) -> None:
    out = tmp_path / "eval"
    spec = EvalSpec(tasks=["synthetic"], lengths=[1024, 2048], num_examples=2, seed=0, chat=False, dtype="float32")
    summary = run_eval(model_dir, spec, out, device="cpu", progress=False)
    for task in SYNTHETIC_TASKS:
        for length in (1024, 2048):
            data = json.loads((out / f"{task}_{length}.json").read_text())
            assert data["args"]["length"] == length and len(data["rows"]) == 2
            row = data["rows"][0]
            assert "context" not in row and {"output", "parsed_output", "input_len", "metrics"} <= set(row)
            assert row["input_len"] + data["args"]["max_new_tokens"] <= length
            assert 0 <= data["metrics"][data["main_metric"]] <= 100
    assert set(summary["lengths"]) == {1024, 2048}
    assert set(summary["categories"]) == {"recall", "ruler"}
    for name in ("summary.md", "summary.csv", "score_vs_length.png", "depth_heatmap_json_kv.png",
                 "depth_heatmap_ruler_niah_s_1.png"):
        assert (out / name).stat().st_size > 0, name
    assert "| recall | category |" in (out / "summary.md").read_text()

    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*_*.json")}
    run_eval(model_dir, spec, out, device="cpu", progress=False)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("*_*.json")}


@pytest.mark.slow
def test_chat_prompting_end_to_end(model_dir, tmp_path) -> None:
    spec = EvalSpec(tasks=["json_kv", "ruler_vt"], lengths=[768], num_examples=2, chat=True, dtype="float32")
    summary = run_eval(model_dir, spec, tmp_path, device="cpu", progress=False)
    assert set(summary["tasks"]) == {"json_kv", "ruler_vt"}


def _write(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_file_tasks_end_to_end(model_dir, tmp_path) -> None:
    data = tmp_path / "data"
    ctx = [{"title": f"T{i}", "text": f"passage number {i}"} for i in range(20)]
    rag = [{"question": f"question {i}?", "answers": [f"answer {i}"], "ctxs": ctx} for i in range(3)]
    _write(data / "kilt/nq-dev-multikilt_1000_k20_dep6.jsonl", rag)
    _write(data / "kilt/nq-train-multikilt_1000_k3_dep6.jsonl", rag)
    rr = [{"qid": str(q), "query": f"query {q}", "ctxs": [{"id": str(i), "text": f"doc {i}", "label": i % 3}
                                                          for i in range(14)]} for q in range(3)]
    _write(data / "msmarco/test_reranking_data_k14_dep3.jsonl", rr)
    _write(data / "msmarco/test_reranking_data_k10_dep3.jsonl", rr)
    train = [{"text": f"sentence {i}", "label": i % 6} for i in range(300)]
    _write(data / "icl/trec_coarse_train.jsonl", train)
    _write(data / "icl/trec_coarse_test.jsonl", train[:2])
    _write(data / "multi_lexsum/test.jsonl", [{"context": "word " * 3000, "summary": "a short case summary"}])
    out = tmp_path / "out"
    spec = EvalSpec(tasks=["rag_nq", "rerank", "icl_trec_coarse", "multi_lexsum"], lengths=[1024], num_examples=1,
                    data_dir=str(data), chat=False, dtype="float32")
    summary = run_eval(model_dir, spec, out, device="cpu", progress=False)
    assert set(summary["tasks"]) == {"rag_nq", "rerank_msmarco", "icl_trec_coarse", "multi_lexsum"}
    assert set(summary["categories"]) == {"rerank"}  # rag needs all four datasets for its average
    icl = json.loads((out / "icl_trec_coarse_1024.json").read_text())
    assert icl["rows"][0]["input_len"] <= 1024 - 20 and icl["rows"][0]["truncated"]  # 200 shots do not fit
    summ = json.loads((out / "multi_lexsum_1024.json").read_text())
    # HELMET: the document is cut ahead to 1024 - 300 - 400 tokens, the prompt then fits 1024 - 400.
    assert "rougeL_f1" in summ["metrics"] and summ["rows"][0]["input_len"] <= 1024 - 400
    assert "ROUGE-L" in (out / "summary.md").read_text()
