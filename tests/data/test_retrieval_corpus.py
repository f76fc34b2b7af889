"""The demo's passkey rows: the evaluation's own prompt, a one-digit answer, short enough for the base."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from prolong.config import load_recipe
from prolong.data.retrieval_corpus import PASSKEY_GARBAGE_CHARS, longest_document_tokens, passkey_rows
from prolong.errors import UserError
from prolong.eval import protocol as P
from prolong.eval.synthetic import passkey_example


def test_rows_are_the_evaluation_prompt_and_a_one_digit_answer() -> None:
    rows = list(itertools.islice(passkey_rows(seed=0), 300))
    assert rows == list(itertools.islice(passkey_rows(seed=0), 300))  # reproducible
    assert rows != list(itertools.islice(passkey_rows(seed=1), 300))
    keys = set()
    for row in rows:
        key = row["completion"].strip().rstrip(".")
        keys.add(key)
        assert row["completion"] == f" {key}." and len(key) == 1
        before, line, after = row["prompt"].split("\n")[1:4]
        assert line == P.PASSKEY_LINE.format(key=key)
        assert len(before) + len(after) <= PASSKEY_GARBAGE_CHARS
        # exactly what passkey_digit gives a base model, garbage and depth as drawn
        example = passkey_example("x", key, len(before), len(after))
        assert row["prompt"] == P.render(None, example.user_text(), example.answer_prefix, False, example.separator)
    assert keys == {str(d) for d in range(10)}


def test_longest_document_reads_text_and_prompt_completion_rows(tmp_path: Path, tokenizer) -> None:
    path = tmp_path / "rows.jsonl"
    rows = [{"text": "short"}, {"prompt": "a much longer prompt " * 20, "completion": " 7."}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    expected = len(tokenizer(rows[1]["prompt"] + rows[1]["completion"])["input_ids"])
    assert longest_document_tokens(path, tokenizer) == expected


def test_demo_refuses_a_passkey_row_longer_than_the_base(tmp_path: Path, tokenizer_dir: Path) -> None:
    from prolong.demo import check_retrieval_lengths

    recipe = load_recipe("tiny-demo", output_dir=str(tmp_path))
    (tmp_path / "corpus" / "retrieval").mkdir(parents=True)
    (tmp_path / "corpus" / "retrieval" / "retrieval.jsonl").write_text(json.dumps({"text": "Words: a b"}) + "\n")
    long_row = {"prompt": "The grass is green. " * 400, "completion": " 7."}
    (tmp_path / "corpus" / "retrieval" / "passkey.jsonl").write_text(json.dumps(long_row) + "\n")
    with pytest.raises(UserError, match="domain 'passkey': a synthetic document has .* tokens, more than the base"):
        check_retrieval_lengths(recipe, str(tokenizer_dir))
