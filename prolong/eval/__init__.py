"""Long-context evaluation: HELMET/RULER tasks, metrics, generation engine, reports and plots."""

from prolong.eval.runner import evaluate, make_eval_callback, run_eval

__all__ = ["evaluate", "make_eval_callback", "run_eval"]
