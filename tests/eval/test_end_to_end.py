"""A tiny model over the synthetic suite at two lengths writes JSON, tables and plots; reruns skip work."""

from __future__ import annotations

import json

import pytest

from prolong.eval import run_eval
from prolong.eval.tasks import SYNTHETIC_TASKS


def test_synthetic_suite_end_to_end(model_dir, tmp_path) -> None:
    out = tmp_path / "eval"
    summary = run_eval(str(model_dir), tasks="synthetic", lengths="1024,2048", out_dir=str(out), num_examples=2,
                       seed=0, chat=False, dtype="float32", device="cpu", progress=False)
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
    run_eval(str(model_dir), tasks="synthetic", lengths="1024,2048", out_dir=str(out), num_examples=2, seed=0,
             chat=False, dtype="float32", device="cpu", progress=False)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("*_*.json")}


@pytest.mark.slow
def test_chat_prompting_end_to_end(model_dir, tmp_path) -> None:
    summary = run_eval(str(model_dir), tasks="json_kv,ruler_vt", lengths=[768], out_dir=str(tmp_path), num_examples=2,
                       chat=True, dtype="float32", device="cpu", progress=False)
    assert set(summary["tasks"]) == {"json_kv", "ruler_vt"}
