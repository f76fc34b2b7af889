"""Run a task suite: build examples, truncate, generate, score, write JSON/tables/plots; skip finished work."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from prolong.eval import metrics as M
from prolong.eval import protocol as P
from prolong.eval import report
from prolong.eval.engine import Engine, HFEngine, VLLMEngine, load_for_generation, vllm_available
from prolong.eval.plots import plot_depth_heatmap, plot_score_vs_length
from prolong.eval.tasks import TASKS, build_examples, resolve_tasks, score


def parse_lengths(lengths: str | Sequence[int]) -> list[int]:
    """'4096,8k,32K' or [4096, ...] -> sorted unique token counts."""
    if isinstance(lengths, str):
        items = [x.strip().lower() for x in lengths.split(",") if x.strip()]
        return sorted({int(float(x[:-1]) * 1024) if x.endswith("k") else int(x) for x in items})
    return sorted({int(x) for x in lengths})


def wants_chat(tokenizer: Any, chat: bool | None) -> bool:
    """Chat prompting when asked, else when the tokenizer ships a chat template (instruct checkpoints)."""
    return bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), disable=not enabled)


def run_task(engine: Engine, tokenizer: Any, task: str, length: int, num_examples: int, seed: int, chat: bool,
             data_dir: str | None = None, essay_path: str | None = None, depths: Sequence[float] | None = None,
             judge: Any = None, on_done: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Per-example result rows of one (task, length), without the context."""
    spec = TASKS[task]
    examples = build_examples(task, tokenizer, length, num_examples, seed, chat, data_dir, essay_path,
                              tuple(depths) if depths else None)
    budget = length - spec.max_new_tokens - spec.reserve
    prompts, truncated = [], []
    for example in examples:
        ids, cut = P.truncate_context(tokenizer, example, chat, budget, spec.truncation_suffix)
        prompts.append(ids)
        truncated.append(cut)
    generations = engine.generate(prompts, spec.max_new_tokens, spec.stop_newline, on_done=on_done)
    rows = []
    for example, ids, cut, gen in zip(examples, prompts, truncated, generations):
        text = gen.text if chat else example.answer_prefix + gen.text
        meta = {k: v for k, v in example.meta.items() if k != "qrels"}
        rows.append({"id": example.id, "output": gen.text,
                     "parsed_output": M.parse_output(text, example.answer_prefix.strip()),
                     "answers": example.answers, "input_len": len(ids), "output_len": gen.num_tokens,
                     "truncated": cut, "meta": meta, "metrics": score(spec, gen.text, example, chat, judge)})
    return rows


def evaluate(engine: Engine, tokenizer: Any, tasks: str | Sequence[str], lengths: str | Sequence[int],
             out_dir: str | Path, num_examples: int = 100, seed: int = 42, chat: bool | None = None,
             data_dir: str | None = None, essay_path: str | None = None, depths: Sequence[float] | None = None,
             judge: Any = None, args: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Run every (task, length) not already in `out_dir`, then write the summary table and plots."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task_names, length_list = resolve_tasks(tasks), parse_lengths(lengths)
    use_chat = wants_chat(tokenizer, chat)
    with _progress(progress) as bars:
        overall = bars.add_task("eval", total=len(task_names) * len(length_list))
        for task in task_names:
            for length in length_list:
                path = report.result_path(out, task, length)
                if path.exists():  # finished on an earlier run
                    bars.advance(overall)
                    continue
                bar = bars.add_task(f"{task} @ {length}: building prompts", total=num_examples)
                started = time.perf_counter()

                def advance(n: int, bar: int = bar, name: str = f"{task} @ {length}") -> None:
                    bars.update(bar, description=name, advance=n)

                rows = run_task(engine, tokenizer, task, length, num_examples, seed, use_chat, data_dir,
                                essay_path, depths, judge, on_done=advance)
                run_args = {**(args or {}), "task": task, "length": length, "num_examples": num_examples,
                            "seed": seed, "chat": use_chat, "data_dir": data_dir, "essay_path": essay_path,
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


def run_eval(model_dir: str, tasks: str | Sequence[str] = "recall", lengths: str | Sequence[int] = (4096, 8192),
             out_dir: str | None = None, num_examples: int = 100, seed: int = 42, data_dir: str | None = None,
             chat: bool | None = None, essay_path: str | None = None, depths: Sequence[float] | None = None,
             backend: str = "auto", dtype: str = "auto", device: str | None = None, prefill_chunk: int = 2048,
             judge_url: str | None = None, judge_model: str | None = None, judge_api_key: str | None = None,
             trust_remote_code: bool = False, progress: bool = True) -> dict[str, Any]:
    """Evaluate a local HF checkpoint; results go to `out_dir` (default MODEL_DIR/eval). Returns the summary.

    backend: "hf" (chunked-prefill engine), "vllm" (GPU, when installed) or "auto" (vllm when available).
    """
    from prolong.eval.judge import OpenAIJudge

    length_list = parse_lengths(lengths)
    if backend == "vllm" or (backend == "auto" and vllm_available()):
        engine: Engine = VLLMEngine(model_dir, max_model_len=max(length_list), trust_remote_code=trust_remote_code)
        tokenizer = engine.tokenizer
    else:
        model, tokenizer = load_for_generation(model_dir, dtype, device, trust_remote_code)
        engine = HFEngine(model, tokenizer, prefill_chunk=prefill_chunk)
    judge = OpenAIJudge(judge_url, judge_model or "default", judge_api_key) if judge_url else None
    args = {"model_dir": str(model_dir), "backend": type(engine).__name__, "dtype": dtype}
    return evaluate(engine, tokenizer, tasks, length_list, out_dir or Path(model_dir) / "eval", num_examples, seed,
                    chat, data_dir, essay_path, depths, judge, args, progress)


def make_eval_callback(tasks: str | Sequence[str] = "recall", lengths: str | Sequence[int] = (4096,),
                       every_n_steps: int = 1000, out_dir: str | Path = "eval", num_examples: int = 10,
                       seed: int = 42, chat: bool | None = False, data_dir: str | None = None,
                       prefill_chunk: int = 2048) -> Callable[[Any, Any, int], dict[str, float]]:
    """A training hook `(model, tokenizer, step) -> metrics` running a small suite every N steps.

    Results for step S go to OUT_DIR/step_S; the returned dict maps `eval/<task>@<length>` and
    `eval/<category>@<length>` to scores x100 (empty on steps that are not evaluated).
    """

    def callback(model: Any, tokenizer: Any, step: int) -> dict[str, float]:
        if step % every_n_steps:
            return {}
        was_training = model.training
        model.eval()
        try:
            summary = evaluate(HFEngine(model, tokenizer, prefill_chunk=prefill_chunk), tokenizer, tasks, lengths,
                               Path(out_dir) / f"step_{step}", num_examples, seed, chat, data_dir,
                               args={"step": step}, progress=False)
        finally:
            model.train(was_training)
        flat = {f"eval/{t}@{n}": s for t, scores in summary["tasks"].items() for n, s in scores.items()}
        flat |= {f"eval/{c}@{n}": s for c, scores in summary["categories"].items() for n, s in scores.items()}
        return flat

    return callback
