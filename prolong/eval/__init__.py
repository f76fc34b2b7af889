"""Long-context evaluation: HELMET/RULER tasks, metrics, generation engine, reports and plots.

    from prolong.eval import run_eval, make_eval_callback
    summary = run_eval("ckpt/", tasks="recall,rag", lengths="8k,32k", data_dir="helmet_data/")
    hook = make_eval_callback("recall", [8192], every_n_steps=500, out_dir="run/eval", num_examples=20)
    metrics = hook(model, tokenizer, step)  # {} unless step % 500 == 0

Modules: protocol (templates, rendering, truncation), synthetic + words (generated tasks), helmet_files
(tasks read from HELMET's JSONL files), tasks (registry, categories, scoring), metrics, judge (OpenAI-compatible
endpoint), engine + attention (chunked-prefill greedy decoding; vLLM), perplexity, report + plots, short
(lm-eval bridge), runner (run_eval, callback), commands (`prolong eval`).
"""

from prolong.eval.runner import evaluate, make_eval_callback, run_eval

__all__ = ["evaluate", "make_eval_callback", "run_eval"]
