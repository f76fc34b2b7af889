"""Passkey retrieval: the prompt is Landmark Attention's / LongLoRA's, the score their first-number rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prolong.eval import protocol as P
from prolong.eval.synthetic import SynthConfig, build_synthetic, passkey_example
from prolong.eval.tasks import TASKS, score


def reference_prompt(n_garbage_prefix: int, n_garbage_suffix: int, pass_key: str) -> str:
    """LongLoRA's passkey_retrieval.py generate_prompt_landmark, with the garbage lengths given."""
    task_description = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
                        "them. I will quiz you about the important information there.")
    garbage = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
    garbage_inf = " ".join([garbage] * 100)
    information_line = f"The pass key is {pass_key}. Remember it. {pass_key} is the pass key."
    final_question = "What is the pass key? The pass key is"
    lines = [task_description, garbage_inf[:n_garbage_prefix], information_line, garbage_inf[:n_garbage_suffix],
             final_question]
    return "\n".join(lines)


@given(st.integers(0, 3000), st.integers(0, 3000), st.integers(1, 50000))
def test_base_model_prompt_is_longlora_s(before: int, after: int, key: int) -> None:
    example = passkey_example("x", str(key), before, after)
    rendered = P.render(None, example.user_text(), example.answer_prefix, chat=False, separator=example.separator)
    assert rendered == reference_prompt(before, after, str(key))


@pytest.mark.parametrize("output, expected", [
    (" 4242. Remember it.", 1.0),        # the first number is the key
    (" 42420", 0.0),                     # a longer number is not
    (" is 17, not 4242", 0.0),           # only the first number counts
    (" unknown", 0.0),
])
def test_scored_on_the_first_number(output: str, expected: float) -> None:
    example = passkey_example("x", "4242", 10, 10)
    assert score(TASKS["passkey"], output, example, chat=False) == {"first_number_match": expected}


def test_keys_depths_and_lengths(tokenizer) -> None:
    for task, keys in (("passkey", range(1, 50001)), ("passkey_digit", range(10))):
        cfg = SynthConfig(tokenizer, 1024, TASKS[task].sizing_tokens, chat=False, seed=3)
        examples = build_synthetic(task, cfg, num_examples=5)
        assert [e.meta["depth"] for e in examples] == [0.0, 0.25, 0.5, 0.75, 1.0]
        for example in examples:
            key = example.answers[0]
            assert int(key) in keys
            before, line, _ = example.context.split("\n")
            assert line == P.PASSKEY_LINE.format(key=key)
            assert len(before) == round(example.meta["depth"] * example.meta["haystack_chars"])
        # the same seed gives the same examples
        assert build_synthetic(task, cfg, 5) == examples
