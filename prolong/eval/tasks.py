"""Task registry: HELMET/RULER names, categories, token budgets, how examples are built and scored."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prolong.errors import UserError
from prolong.eval import helmet_files as H
from prolong.eval import metrics as M
from prolong.eval import protocol as P


@dataclass(frozen=True)
class TaskSpec:
    """How one task is generated, decoded and scored (HELMET's settings: configs/*.yaml, generate_configs.py)."""

    name: str
    category: str
    max_new_tokens: int  # HELMET's generation_max_length
    scorer: str  # subem | ruler | first_number | ndcg | icl | qa | choice | summ
    synthetic: bool = False
    # HELMET's configs ask for a newline stop on RAG/re-rank/ICL under the key `stop_new_line`, which its
    # argument parser (`--stop_newline`) never reads: every published HELMET number decoded without it.
    stop_newline: bool = False
    main_metric: str = "substring_exact_match"
    # HELMET's `use_chat_template` per task: chat models get their chat template only on long QA and
    # summarization; recall, RAG, re-rank, ICL and RULER are prompted as plain text even for instruct models.
    chat_template: bool = False
    # Synthetic tasks: tokens kept free when sizing the haystack (RULER's tokens_to_generate).
    sizing_tokens: int = 0
    # Long documents: cut ahead of time to length - context_reserve - max_new_tokens tokens, with
    # protocol.TRUNCATION_SUFFIX (HELMET's dataset names narrativeqa_130772 etc.); 0 = no such cut.
    context_reserve: int = 0
    # The prefix HELMET's post-processing parses after ("Answer:" unless the task says otherwise).
    parse_prefix: str = "Answer:"


def _t(name: str, category: str, tokens: int, scorer: str, main: str, **kw: Any) -> TaskSpec:
    return TaskSpec(name, category, tokens, scorer, main_metric=main, **kw)


def _ruler(name: str, tokens: int, sizing: int) -> TaskSpec:
    category = "recall" if name in ("ruler_niah_mk_2", "ruler_niah_mk_3", "ruler_niah_mv") else "ruler"
    return _t(name, category, tokens, "ruler", "ruler_recall", synthetic=True, sizing_tokens=sizing)


_LONGQA = {"chat_template": True, "context_reserve": 200}
TASKS: dict[str, TaskSpec] = {
    "json_kv": _t("json_kv", "recall", 100, "subem", "substring_exact_match", synthetic=True, sizing_tokens=100,
                  parse_prefix="corresponding value:"),
    # HELMET's generation lengths (50/100); haystacks sized with RULER's tokens_to_generate (128/30/120/50).
    **{name: _ruler(name, 100 if name in ("ruler_niah_mk_3", "ruler_niah_mq") else 50, 128)
       for name in ("ruler_niah_s_1", "ruler_niah_s_2", "ruler_niah_s_3", "ruler_niah_mk_1", "ruler_niah_mk_2",
                    "ruler_niah_mk_3", "ruler_niah_mv", "ruler_niah_mq")},
    # Passkey retrieval (not a HELMET or RULER task): LongLoRA's 10 new tokens, scored on the first number.
    **{name: _t(name, "passkey", 10, "first_number", "first_number_match", synthetic=True, sizing_tokens=10)
       for name in ("passkey", "passkey_digit")},
    "ruler_vt": _ruler("ruler_vt", 50, 30),
    "ruler_cwe": _ruler("ruler_cwe", 100, 120),
    "ruler_fwe": _ruler("ruler_fwe", 50, 50),
    **{f"rag_{n}": _t(f"rag_{n}", "rag", 20, "subem", "substring_exact_match") for n in H.RAG_FILES},
    "rerank_msmarco": _t("rerank_msmarco", "rerank", 200, "ndcg", "ndcg@10"),
    **{f"icl_{n}": _t(f"icl_{n}", "icl", 20, "icl", "exact_match", parse_prefix="label:") for n in H.ICL_SHOTS},
    "narrativeqa": _t("narrativeqa", "qa", 100, "qa", "rougeL_f1", **_LONGQA),
    "infbench_qa": _t("infbench_qa", "qa", 10, "qa", "rougeL_f1", **_LONGQA),
    "infbench_choice": _t("infbench_choice", "qa", 10, "choice", "exact_match", **_LONGQA),
    "infbench_sum": _t("infbench_sum", "summ", 1200, "summ", "rougeL_f1", **_LONGQA),
    "multi_lexsum": _t("multi_lexsum", "summ", 400, "summ", "rougeL_f1", chat_template=True, context_reserve=300,
                       parse_prefix="Summary:"),
}
SYNTHETIC_TASKS = [name for name, spec in TASKS.items() if spec.synthetic]
CATEGORIES: dict[str, list[str]] = {
    "recall": ["json_kv", "ruler_niah_mk_2", "ruler_niah_mk_3", "ruler_niah_mv"],
    "synthetic": SYNTHETIC_TASKS,
    **{c: [n for n, s in TASKS.items() if s.category == c] for c in ("ruler", "passkey", "rag", "rerank", "icl", "qa", "summ")},
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
        cfg = SynthConfig(tokenizer, length, spec.sizing_tokens or spec.max_new_tokens, chat, seed, depths,
                          essay_path)
        return build_synthetic(task, cfg, num_examples)
    examples = _from_files(task, tokenizer, length, num_examples, seed, data_dir)
    if spec.context_reserve:
        limit = length - spec.context_reserve - spec.max_new_tokens
        examples = [replace(e, context=P.pretruncate_context(tokenizer, e.context, limit)) for e in examples]
    return examples


def uses_chat(spec: TaskSpec, model_chat: bool) -> bool:
    """Whether a task is prompted through the chat template: a chat model and a HELMET chat task."""
    return model_chat and spec.chat_template


def _from_files(task: str, tokenizer: Any, length: int, num_examples: int, seed: int,
                data_dir: str | None) -> list[P.Example]:
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
    """Metrics (0..1) of one output, as HELMET's post-processing computes them.

    Base models get the answer prefix prepended before scoring (HELMET eval.py), so a base model's
    "Answer: x" and a chat model's "x" parse alike.
    """
    text = output if chat else example.answer_prefix + output
    if spec.scorer == "ruler":
        return {"ruler_recall": M.string_match_all(text, example.answers),
                "ruler_part": M.string_match_part(text, example.answers)}
    if spec.scorer == "first_number":
        return {"first_number_match": M.first_number_match(text, example.answers)}
    if spec.scorer == "icl":  # only the parsed label counts
        return M.answer_metrics(M.parse_output(text, spec.parse_prefix), example.answers)
    if spec.scorer == "ndcg":
        ranking = M.parse_ranking(text)
        return {"ndcg@10": M.ndcg_at_10(ranking, example.meta["qrels"], example.meta["qid"]),
                "num_ranked": float(len(ranking))}
    if spec.scorer == "choice":
        return choice_metrics(text, example.answers)
    metrics = M.qa_metrics(text, example.answers, spec.parse_prefix)
    if judge is not None and spec.scorer == "qa":
        metrics.update(judge.score_qa(example.meta.get("question", ""), example.answers, output))
    elif judge is not None and spec.scorer == "summ":
        metrics.update(judge.score_summary(example.answers[0], example.meta.get("keypoints", []), output))
    return metrics


def choice_metrics(text: str, answers: list[str]) -> dict[str, float]:
    """InfiniteBench multiple choice, HELMET's rule: answers = [letter, "letter. option"].

    EM/F1/ROUGE as for QA (note that normalisation deletes the article "A", so the gold letter A equals an
    empty answer: HELMET's behaviour, kept so scores match); the option's full text anywhere in the output
    (case-insensitive) counts as exact and substring match.
    """
    raw, parsed = M.answer_metrics(text, answers), M.answer_metrics(M.parse_output(text), answers)
    metrics = {k: max(v, parsed[k]) for k, v in raw.items() if k != "substring_exact_match"}
    found = float(answers[1].lower() in text.lower())
    metrics["substring_exact_match"] = found
    metrics["exact_match"] = max(metrics["exact_match"], found)
    return metrics
