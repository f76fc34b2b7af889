"""`prolong eval ...`: typed command functions; each docstring is the command's --help."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from prolong.publish import write_json


def eval(
    model_dir: str,
    tasks: str = "recall",
    lengths: str = "4096,8192",
    out_dir: str | None = None,
    num_examples: int = 100,
    seed: int = 42,
    data_dir: str | None = None,
    short: bool = False,
    chat: bool | None = None,
    essay_path: str | None = None,
    depths: str | None = None,
    backend: str = "auto",
    dtype: str = "auto",
    prefill_chunk: int = 2048,
    judge_url: str | None = None,
    judge_model: str | None = None,
    short_tasks: str = "hellaswag,mmlu,arc_challenge,winogrande,gsm8k",
    short_limit: int | None = None,
    tasks_dir: str | None = None,
    trust_remote_code: bool = False,
) -> None:
    """Long-context evaluation of a local HF checkpoint (HELMET/RULER protocol).

    --tasks: comma list of tasks, aliases or categories: recall (json_kv + RULER mk_2, mk_3, mv), ruler,
    synthetic (all generated tasks), rag, rerank, icl, qa, summ; or names such as json_kv, ruler_niah_s_1,
    niah_multikey_2, ruler_vt, ruler_cwe, ruler_fwe, rag_nq, rerank_msmarco, icl_trec_coarse, narrativeqa.
    --lengths: prompt lengths in tokens (4096,8k,32K); prompt + answer budget never exceed them.
    Synthetic tasks are generated with the model's tokenizer; the others read HELMET files from --data-dir
    (a missing file is named with its expected format). --essay-path: prose for the essay haystack.
    --depths: needle depths (0..1, comma list) cycled over examples, for depth x length heatmaps.
    --chat/--no-chat: chat template vs base prompting (default: chat when the tokenizer has a template).
    --judge-url: OpenAI-compatible endpoint (http://host:port/v1) for QA/summary scores; else ROUGE-L.
    Outputs in --out-dir (default MODEL_DIR/eval): TASK_LENGTH.json, summary.md/.csv, plots. Finished
    (task, length) files are skipped on rerun.
    --short: instead run lm-eval on --short-tasks (local files: --data-dir/<task>/<split>.jsonl, or your
    own YAMLs in --tasks-dir); needs the eval extra.
    """
    console = Console()
    if short:
        from prolong.eval.short import run_short

        results = run_short(model_dir, [t for t in short_tasks.split(",") if t], data_dir=data_dir,
                            tasks_dir=tasks_dir, limit=short_limit)
        out = Path(out_dir or Path(model_dir) / "eval")
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "short.json", results, indent=1)
        for task, metrics in results.items():
            console.print(task, {k: round(v, 4) for k, v in metrics.items()}, highlight=False)
        return
    from prolong.eval.runner import run_eval

    run_eval(model_dir, tasks, lengths, out_dir, num_examples, seed, data_dir, chat=chat, essay_path=essay_path,
             depths=[float(d) for d in depths.split(",")] if depths else None, backend=backend, dtype=dtype,
             prefill_chunk=prefill_chunk, judge_url=judge_url, judge_model=judge_model,
             trust_remote_code=trust_remote_code)
    out = Path(out_dir or Path(model_dir) / "eval")
    console.print((out / "summary.md").read_text(), highlight=False)
    console.print(f"results in {out}")


def perplexity(model_dir: str, docs: str, seq_len: int = 65536, last_n: int = 32768, num_buckets: int = 8,
               max_docs: int = 10, out: str | None = None, dtype: str = "auto") -> None:
    """Loss and perplexity by position on the last LAST_N tokens of SEQ_LEN-token documents.

    --docs: a .txt/.jsonl ('text' field) file or directory of long documents. A secondary signal only:
    judge long-context ability by the downstream tasks of `prolong eval`.
    """
    from prolong.eval.engine import load_for_generation
    from prolong.eval.perplexity import perplexity_by_position, read_texts

    model, tokenizer = load_for_generation(model_dir, dtype)
    result = perplexity_by_position(model, tokenizer, read_texts(docs), seq_len, last_n, num_buckets, max_docs)
    text = json.dumps(result, indent=1)
    if out:
        Path(out).write_text(text)
    print(text)
