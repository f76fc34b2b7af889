"""Synthetic prompts land within 1% below `length - max_new_tokens` and never above, base and chat."""

from __future__ import annotations

import pytest

from prolong.eval import protocol as P
from prolong.eval.synthetic import SynthConfig, build_synthetic
from prolong.eval.tasks import SYNTHETIC_TASKS, TASKS


@pytest.mark.parametrize("length", [4096, 32768])
@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
def test_prompt_fills_length(tokenizer, task: str, length: int) -> None:
    spec = TASKS[task]
    chat = task.endswith("mk_3") or task == "ruler_cwe"  # exercise the chat template on a few tasks
    cfg = SynthConfig(tokenizer, length, spec.max_new_tokens, chat=chat, seed=1)
    examples = build_synthetic(task, cfg, num_examples=1 if length > 4096 else 2)
    for example in examples:
        n = len(P.prompt_ids(tokenizer, example, chat))
        assert n <= length - spec.max_new_tokens, (task, n)
        assert n >= 0.99 * (length - spec.max_new_tokens), (task, n)
        assert all(a for a in example.answers)
