"""Synthetic prompts land within 1% below `length - sizing_tokens` and never above, base and chat.

Sizing tokens are RULER's tokens_to_generate. Two tasks follow their reference instead: JSON KV at HELMET's
lengths has HELMET's fixed pair count, and FWE grows in RULER's steps of budget/32 words (so it can stop up
to one step short).
"""

from __future__ import annotations

import pytest

from prolong.eval import protocol as P
from prolong.eval.synthetic import JSON_KV_PAIRS, SynthConfig, build_synthetic
from prolong.eval.tasks import SYNTHETIC_TASKS, TASKS


@pytest.mark.parametrize("length", [4000, 32768])
@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
def test_prompt_fills_length(tokenizer, task: str, length: int) -> None:
    spec = TASKS[task]
    chat = task.endswith("mk_3") or task == "ruler_cwe"  # exercise the chat template on a few tasks
    cfg = SynthConfig(tokenizer, length, spec.sizing_tokens, chat=chat, seed=1)
    examples = build_synthetic(task, cfg, num_examples=1 if length > 4096 else 2)
    budget = length - spec.sizing_tokens
    for example in examples:
        n = len(P.prompt_ids(tokenizer, example, chat))
        if task == "json_kv" and length in JSON_KV_PAIRS:
            assert example.meta["num_pairs"] == JSON_KV_PAIRS[length]
            continue
        assert n <= budget, (task, n)
        assert n >= (0.85 if task == "ruler_fwe" else 0.99) * budget, (task, n)
        assert all(a for a in example.answers)
