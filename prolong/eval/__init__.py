"""Long-context evaluation: HELMET/RULER tasks, metrics, generation engine, reports and plots.

    from prolong.config import EvalSpec
    from prolong.eval import run_eval, make_eval_callback
    summary = run_eval("ckpt/", EvalSpec(tasks=["recall", "rag"], lengths=["8K", "32K"], data_dir="helmet_data/"))
    hook = make_eval_callback(EvalSpec(tasks=["recall"], lengths=[8192], every_n_steps=500), "run/eval")
    metrics = hook(model, tokenizer, step)  # {} unless step % 500 == 0

Modules: protocol (templates, rendering, truncation), synthetic + words (generated tasks), helmet_files
(tasks read from HELMET's JSONL files), tasks (registry, categories, scoring), metrics, judge (OpenAI-compatible
endpoint), engine + attention (chunked-prefill greedy decoding; vLLM), perplexity, report + plots, short
(lm-eval bridge), runner (run_eval, callback), commands (`prolong eval`).
"""

from prolong.eval.runner import evaluate, make_eval_callback, run_eval

__all__ = ["evaluate", "make_eval_callback", "run_eval"]
