"""Result files: one JSON per (task, length), a summary table (Markdown + CSV) with category averages."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from prolong.eval.tasks import CATEGORIES, TASKS
from prolong.publish import atomic_file, write_json, write_text

# HELMET's report categories, in its order; "ruler" and "synthetic" are ours for the other RULER tasks.
REPORT_CATEGORIES = ["recall", "rag", "rerank", "icl", "qa", "summ", "ruler"]


def result_path(out_dir: Path, task: str, length: int) -> Path:
    """Where the JSON of one (task, length) lives; its existence marks the work as finished."""
    return out_dir / f"{task}_{length}.json"


def average_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of every per-example metric, x100 as HELMET reports."""
    names = sorted({name for row in rows for name in row["metrics"]})
    return {n: 100 * sum(r["metrics"].get(n, 0.0) for r in rows) / max(1, len(rows)) for n in names}


def write_result(path: Path, args: dict[str, Any], task: str, length: int, rows: list[dict[str, Any]]) -> dict:
    """Write one (task, length) JSON atomically (a crash never leaves a file that a rerun would skip)."""
    result = {"task": task, "length": length, "category": TASKS[task].category,
              "main_metric": TASKS[task].main_metric, "args": args, "metrics": average_metrics(rows),
              "num_examples": len(rows), "rows": rows}
    write_json(path, result, indent=1, ensure_ascii=False)
    return result


def load_results(out_dir: Path) -> list[dict[str, Any]]:
    """Every finished (task, length) JSON in `out_dir`."""
    results = []
    for path in sorted(out_dir.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "task" in data and "rows" in data and data["task"] in TASKS:
            results.append(data)
    return results


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """{"lengths", "tasks": {task: {length: score}}, "categories": {category: {length: mean of tasks}}}."""
    lengths = sorted({r["length"] for r in results})
    tasks: dict[str, dict[int, float]] = {}
    for r in results:
        tasks.setdefault(r["task"], {})[r["length"]] = r["metrics"].get(r["main_metric"], 0.0)
    categories: dict[str, dict[int, float]] = {}
    for category in REPORT_CATEGORIES:
        members = CATEGORIES[category]
        for length in lengths:
            scores = [tasks[t][length] for t in members if length in tasks.get(t, {})]
            # A category average needs every one of its tasks at that length, as in HELMET's tables.
            if len(scores) == len(members):
                categories.setdefault(category, {})[length] = sum(scores) / len(scores)
    return {"lengths": lengths, "tasks": tasks, "categories": categories}


def _label(length: int) -> str:
    return f"{length // 1024}K" if length % 1024 == 0 else str(length)


def write_summary(out_dir: Path, summary: dict[str, Any]) -> None:
    """summary.md (task and category tables), summary.csv and summary.json."""
    lengths = summary["lengths"]
    header = ["name", "kind", "metric"] + [_label(n) for n in lengths]
    lines = []
    for category, scores in summary["categories"].items():
        lines.append([category, "category", "mean"] + [f"{scores[n]:.1f}" if n in scores else "" for n in lengths])
    for task, scores in summary["tasks"].items():
        lines.append([task, TASKS[task].category, TASKS[task].main_metric]
                     + [f"{scores[n]:.1f}" if n in scores else "" for n in lengths])
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(row) + " |" for row in lines]
    note = ("Scores x100. Prompts, decoding, parsing and metrics follow HELMET's code (docs/fidelity.md): "
            "a chat model gets its chat template on qa/summ only, as in HELMET. qa/summ use ROUGE-L F1 "
            "(rouge-score, stemmed) unless a judge is configured (judge_* metrics in the per-task JSON); "
            "HELMET's QA/Summ columns are judge scores.")
    write_text(out_dir / "summary.md", "\n".join(md) + "\n\n" + note + "\n")
    with atomic_file(out_dir / "summary.csv", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(lines)
    write_json(out_dir / "summary.json", summary, indent=1)
