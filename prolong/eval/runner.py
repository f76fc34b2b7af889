"""Run a task suite: build examples, truncate, generate, score, write JSON/tables/plots; skip finished work.

Every entry point takes one `EvalSpec` (the recipe's `eval:` block, prolong.config): `prolong eval`, the
training hook (`make_eval_callback`) and the demo. The resolved spec (engine and chat prompting decided)
is saved beside the results as eval_spec.yaml.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from prolong.config import EvalSpec
from prolong.errors import UserError
from prolong.eval import metrics as M
from prolong.eval import protocol as P
from prolong.eval import report
from prolong.eval.engine import Engine, HFEngine, VLLMEngine, load_for_generation, resolve_engine
from prolong.eval.plots import plot_depth_heatmap, plot_score_vs_length
from prolong.eval.tasks import TASKS, build_examples, resolve_tasks, score, uses_chat
from prolong.publish import write_text

SPEC_FILE = "eval_spec.yaml"
# The training hook runs a small suite: at most this many examples per (task, length).
CALLBACK_MAX_EXAMPLES = 10


def wants_chat(tokenizer: Any, chat: bool | None) -> bool:
    """Chat prompting when asked, else when the tokenizer ships a chat template (instruct checkpoints)."""
    return bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), disable=not enabled)


def make_judge(spec: EvalSpec) -> Any:
    """The OpenAI-compatible judge of `spec` (None without judge_url: QA and summaries get ROUGE-L)."""
    if spec.judge_url is None:
        return None
    from prolong.eval.judge import OpenAIJudge

    api_key = None
    if spec.judge_api_key_env is not None:
        api_key = os.environ.get(spec.judge_api_key_env)
        if not api_key:
            raise UserError(f"eval.judge_api_key_env: environment variable {spec.judge_api_key_env} is not set")
    return OpenAIJudge(spec.judge_url, spec.judge_model, api_key)


def save_spec(spec: EvalSpec, out_dir: Path, model: str | None = None) -> Path:
    """Write the resolved spec beside the results: a YAML `eval:` block a recipe can take back."""
    header = f"# resolved eval settings{f' of {model}' if model else ''}; a recipe's eval: block reads them\n"
    body = yaml.safe_dump({"eval": spec.model_dump(mode="json")}, sort_keys=False)
    return write_text(out_dir / SPEC_FILE, header + body)


def run_task(engine: Engine, tokenizer: Any, task: str, length: int, spec: EvalSpec, judge: Any = None,
             on_done: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Per-example result rows of one (task, length), without the context. `spec.chat` is resolved."""
    # HELMET prompts only its long-QA/summarization tasks through a chat model's template.
    task_spec = TASKS[task]
    chat = uses_chat(task_spec, bool(spec.chat))
    examples = build_examples(task, tokenizer, length, spec.num_examples, spec.seed, chat, spec.data_dir,
                              spec.essay_path, tuple(spec.depths) if spec.depths else None)
    budget = length - task_spec.max_new_tokens
    prompts, truncated = [], []
    for example in examples:
        ids, cut = P.truncate_context(tokenizer, example, chat, budget)
        prompts.append(ids)
        truncated.append(cut)
    generations = engine.generate(prompts, task_spec.max_new_tokens, task_spec.stop_newline, on_done=on_done)
    rows = []
    for example, ids, cut, gen in zip(examples, prompts, truncated, generations, strict=True):
        text = gen.text if chat else example.answer_prefix + gen.text
        meta = {k: v for k, v in example.meta.items() if k != "qrels"}
        rows.append({"id": example.id, "output": gen.text,
                     "parsed_output": M.parse_output(text, task_spec.parse_prefix),
                     "answers": example.answers, "input_len": len(ids), "output_len": gen.num_tokens,
                     "truncated": cut, "meta": meta, "metrics": score(task_spec, gen.text, example, chat, judge)})
    return rows


def evaluate(engine: Engine, tokenizer: Any, spec: EvalSpec, out_dir: str | Path, args: dict[str, Any] | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Run every (task, length) of `spec` not already in `out_dir`, then write the summary table and plots.

    `spec.engine` names the engine given (resolved: hf or vllm); chat=None is resolved from the tokenizer.
    The resolved spec is saved as OUT_DIR/eval_spec.yaml.
    """
    if spec.engine == "auto":
        raise ValueError("evaluate() needs the resolved engine in spec.engine (hf or vllm), not auto")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = spec.model_copy(update={"chat": wants_chat(tokenizer, spec.chat)})
    task_names = resolve_tasks(spec.tasks)
    judge = make_judge(spec)
    save_spec(spec, out, (args or {}).get("model_dir"))
    with _progress(progress) as bars:
        overall = bars.add_task("eval", total=len(task_names) * len(spec.lengths))
        for task in task_names:
            for length in spec.lengths:
                path = report.result_path(out, task, length)
                if path.exists():  # finished on an earlier run
                    bars.advance(overall)
                    continue
                bar = bars.add_task(f"{task} @ {length}: building prompts", total=spec.num_examples)
                started = time.perf_counter()

                def advance(n: int, bar: TaskID = bar, name: str = f"{task} @ {length}") -> None:
                    bars.update(bar, description=name, advance=n)

                rows = run_task(engine, tokenizer, task, length, spec, judge, on_done=advance)
                run_args = {**(args or {}), "engine": spec.engine, "dtype": spec.dtype, "task": task,
                            "length": length, "num_examples": spec.num_examples, "seed": spec.seed,
                            "chat": uses_chat(TASKS[task], bool(spec.chat)), "data_dir": spec.data_dir, "essay_path": spec.essay_path,
                            "max_new_tokens": TASKS[task].max_new_tokens, "judge": judge is not None,
                            "seconds": round(time.perf_counter() - started, 2)}
                report.write_result(path, run_args, task, length, rows)
                bars.remove_task(bar)
                bars.advance(overall)
    return write_reports(out)


def write_reports(out: Path) -> dict[str, Any]:
    """Summary table and plots from every result JSON in `out`."""
    results = report.load_results(out)
    summary = report.summarize(results)
    report.write_summary(out, summary)
    if results:
        plot_score_vs_length(summary, out / "score_vs_length.png")
        for task in sorted({r["task"] for r in results}):
            if any("depth" in row.get("meta", {}) for r in results if r["task"] == task for row in r["rows"]):
                plot_depth_heatmap(results, task, out / f"depth_heatmap_{task}.png")
    return summary


def run_eval(model_dir: str | Path, spec: EvalSpec, out_dir: str | Path | None = None, *,
             trust_remote_code: bool = False, device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate a local HF checkpoint with `spec`; results go to `out_dir` (default MODEL_DIR/eval).

    The engine is resolved from spec.engine (auto: vllm when installed with a GPU, else hf), printed, and
    recorded in the saved eval_spec.yaml. Returns the summary.
    """
    engine_name = resolve_engine(spec.engine)
    print(f"eval engine: {engine_name} (eval.engine: {spec.engine})", flush=True)
    spec = spec.model_copy(update={"engine": engine_name})
    if engine_name == "vllm":
        engine: Engine = VLLMEngine(str(model_dir), max_model_len=max(spec.lengths), dtype=spec.dtype,
                                    trust_remote_code=trust_remote_code)
        tokenizer = engine.tokenizer
    else:
        model, tokenizer = load_for_generation(str(model_dir), spec.dtype, device, trust_remote_code)
        engine = HFEngine(model, tokenizer, prefill_chunk=spec.prefill_chunk)
    out = Path(out_dir) if out_dir is not None else Path(model_dir) / "eval"
    return evaluate(engine, tokenizer, spec, out, {"model_dir": str(model_dir)}, progress)


def make_eval_callback(spec: EvalSpec, out_dir: str | Path) -> Callable[[Any, Any, int], dict[str, float]]:
    """A training hook `(model, tokenizer, step) -> metrics` running a small suite every spec.every_n_steps.

    The suite is `spec` with at most 10 examples per (task, length), base prompting unless spec.chat is
    set, on the hf engine over the in-memory model. Results for step S go to OUT_DIR/step_S; the returned
    dict maps `eval/<task>@<length>` and `eval/<category>@<length>` to scores x100 (empty on other steps).
    """
    if spec.every_n_steps is None:
        raise ValueError("make_eval_callback needs spec.every_n_steps")
    every = spec.every_n_steps
    small = spec.model_copy(update={"num_examples": min(spec.num_examples, CALLBACK_MAX_EXAMPLES),
                                    "chat": bool(spec.chat), "engine": "hf"})

    def callback(model: Any, tokenizer: Any, step: int) -> dict[str, float]:
        if step % every:
            return {}
        was_training = model.training
        model.eval()
        try:
            summary = evaluate(HFEngine(model, tokenizer, prefill_chunk=small.prefill_chunk), tokenizer, small,
                               Path(out_dir) / f"step_{step}", args={"step": step}, progress=False)
        finally:
            model.train(was_training)
        flat = {f"eval/{t}@{n}": s for t, scores in summary["tasks"].items() for n, s in scores.items()}
        flat |= {f"eval/{c}@{n}": s for c, scores in summary["categories"].items() for n, s in scores.items()}
        return flat

    return callback
