"""Task registry: HELMET/RULER names, categories, token budgets, how examples are built and scored."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prolong.errors import UserError
from prolong.eval import helmet_files as H
from prolong.eval import metrics as M
from prolong.eval import protocol as P


@dataclass(frozen=True)
class TaskSpec:
    """How one task is generated, decoded and scored."""

    name: str
    category: str
    max_new_tokens: int
    scorer: str  # subem | ruler | ndcg | icl | qa | choice | summ
    synthetic: bool = False
    stop_newline: bool = False
    main_metric: str = "substring_exact_match"
    # Long-document tasks keep 200 tokens of slack and mark the cut (HELMET's QA/summarization rule).
    truncation_suffix: str = ""
    reserve: int = 0


def _t(name: str, category: str, tokens: int, scorer: str, main: str, **kw: Any) -> TaskSpec:
    return TaskSpec(name, category, tokens, scorer, main_metric=main, **kw)


_LONGDOC = {"truncation_suffix": P.TRUNCATION_SUFFIX, "reserve": 200}
TASKS: dict[str, TaskSpec] = {
    "json_kv": _t("json_kv", "recall", 100, "subem", "substring_exact_match", synthetic=True),
    **{name: _t(name, "recall" if name in ("ruler_niah_mk_2", "ruler_niah_mk_3", "ruler_niah_mv") else "ruler",
                128, "ruler", "ruler_recall", synthetic=True)
       for name in ("ruler_niah_s_1", "ruler_niah_s_2", "ruler_niah_s_3", "ruler_niah_mk_1", "ruler_niah_mk_2",
                    "ruler_niah_mk_3", "ruler_niah_mv", "ruler_niah_mq")},
    "ruler_vt": _t("ruler_vt", "ruler", 30, "ruler", "ruler_recall", synthetic=True),
    "ruler_cwe": _t("ruler_cwe", "ruler", 120, "ruler", "ruler_recall", synthetic=True),
    "ruler_fwe": _t("ruler_fwe", "ruler", 50, "ruler", "ruler_recall", synthetic=True),
    **{f"rag_{n}": _t(f"rag_{n}", "rag", 20, "subem", "substring_exact_match", stop_newline=True)
       for n in H.RAG_FILES},
    "rerank_msmarco": _t("rerank_msmarco", "rerank", 200, "ndcg", "ndcg@10", stop_newline=True),
    **{f"icl_{n}": _t(f"icl_{n}", "icl", 20, "icl", "exact_match", stop_newline=True) for n in H.ICL_SHOTS},
    "narrativeqa": _t("narrativeqa", "qa", 100, "qa", "rougeL_f1", **_LONGDOC),
    "infbench_qa": _t("infbench_qa", "qa", 10, "qa", "rougeL_f1", **_LONGDOC),
    "infbench_choice": _t("infbench_choice", "qa", 10, "choice", "exact_match", **_LONGDOC),
    "infbench_sum": _t("infbench_sum", "summ", 1200, "summ", "rougeL_f1", **_LONGDOC),
    "multi_lexsum": _t("multi_lexsum", "summ", 400, "summ", "rougeL_f1", **_LONGDOC),
}
SYNTHETIC_TASKS = [name for name, spec in TASKS.items() if spec.synthetic]
CATEGORIES: dict[str, list[str]] = {
    "recall": ["json_kv", "ruler_niah_mk_2", "ruler_niah_mk_3", "ruler_niah_mv"],
    "synthetic": SYNTHETIC_TASKS,
    **{c: [n for n, s in TASKS.items() if s.category == c] for c in ("ruler", "rag", "rerank", "icl", "qa", "summ")},
}
# RULER's own names and short forms.
ALIASES = {
    "niah_single_1": "ruler_niah_s_1", "niah_single_2": "ruler_niah_s_2", "niah_single_3": "ruler_niah_s_3",
    "niah_single": "ruler_niah_s_1",
    "niah_multikey_1": "ruler_niah_mk_1", "niah_multikey_2": "ruler_niah_mk_2", "niah_multikey_3": "ruler_niah_mk_3",
    "niah_multivalue": "ruler_niah_mv", "niah_multiquery": "ruler_niah_mq",
    "vt": "ruler_vt", "cwe": "ruler_cwe", "fwe": "ruler_fwe", "rag_triviaqa": "rag_tqa",
    "icl_clinc150": "icl_clinic150", "msmarco": "rerank_msmarco",
}


def resolve_tasks(names: str | list[str]) -> list[str]:
    """Task names from a comma list of tasks, aliases and categories, in order, without repeats."""
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    out: list[str] = []
    for item in filter(None, items):
        item = ALIASES.get(item, item)
        if item in CATEGORIES:
            out += CATEGORIES[item]
        elif item in TASKS:
            out.append(item)
        else:
            raise UserError(f"unknown task {item!r}; known tasks: {', '.join(TASKS)}; "
                            f"categories: {', '.join(CATEGORIES)}; aliases: {', '.join(ALIASES)}")
    return list(dict.fromkeys(out))


def build_examples(task: str, tokenizer: Any, length: int, num_examples: int, seed: int, chat: bool,
                   data_dir: str | None = None, essay_path: str | None = None,
                   depths: tuple[float, ...] | None = None) -> list[P.Example]:
    """The examples of one task at one length (synthetic: exact length; files: read from data_dir)."""
    from prolong.eval.synthetic import SynthConfig, build_synthetic

    spec = TASKS[task]
    if spec.synthetic:
        cfg = SynthConfig(tokenizer, length, spec.max_new_tokens, chat, seed, depths, essay_path)
        return build_synthetic(task, cfg, num_examples)
    if data_dir is None:
        raise UserError(f"task {task} reads HELMET data files: pass data_dir (see prolong.eval.helmet_files)")
    root = Path(data_dir)
    if task.startswith("rag_"):
        return H.rag(task[4:], root, length, num_examples, seed)
    if task == "rerank_msmarco":
        return H.rerank(root, length, num_examples, seed)
    if task.startswith("icl_"):
        return H.icl(task[4:], root, length, num_examples, seed)
    if task == "narrativeqa":
        return H.narrativeqa(root, length, num_examples, seed)
    if task.startswith("infbench_"):
        return H.infbench(task.split("_")[1], root, length, num_examples, seed)
    return H.multi_lexsum(root, length, num_examples, seed)


def score(spec: TaskSpec, output: str, example: P.Example, chat: bool, judge: Any = None) -> dict[str, float]:
    """Metrics (0..1) of one output. Base models get the answer prefix prepended, as HELMET does."""
    text = output if chat else example.answer_prefix + output
    prefix = example.answer_prefix.strip()
    if spec.scorer == "ruler":
        return {"ruler_recall": M.string_match_all(output, example.answers),
                "ruler_part": M.string_match_part(output, example.answers)}
    if spec.scorer == "subem":
        return M.qa_metrics(text, example.answers, prefix)
    if spec.scorer == "icl":
        parsed = M.parse_output(text, prefix)
        return {"exact_match": max(M.exact_match(output, example.answers), M.exact_match(parsed, example.answers))}
    if spec.scorer == "ndcg":
        ranking = M.parse_ranking(M.parse_output(text, prefix) or output)
        ranking = ranking or M.parse_ranking(output)
        return {"ndcg@10": M.ndcg_at_10(ranking, example.meta["qrels"], example.meta["qid"]),
                "num_ranked": float(len(ranking))}
    if spec.scorer == "choice":
        # Letters are not compared through normalize_answer, which deletes the article "A".
        parsed = M.parse_output(text, prefix)
        letter = parsed.strip().lstrip("([").strip()[:1]
        by_letter = float(bool(letter) and letter == example.meta.get("gold_letter"))
        return {"exact_match": max(by_letter, M.exact_match(parsed, example.answers)),
                "substring_exact_match": max(by_letter, M.substring_exact_match(parsed, example.answers))}
    metrics = dict(M.rouge_l(M.parse_output(text, prefix) or output, example.answers))
    if spec.scorer == "qa":
        metrics.update(M.qa_metrics(text, example.answers, prefix))
        if judge is not None:
            metrics.update(judge.score_qa(example.meta.get("question", ""), example.answers, output))
    elif judge is not None:
        metrics.update(judge.score_summary(example.answers[0], example.meta.get("keypoints", []), output))
    return metrics
