"""The recipe's `synth` section: defaults and the errors a wrong one gets."""

from __future__ import annotations

import pytest

from prolong.config import RecipeError


def test_defaults_follow_the_paper(make_recipe) -> None:
    spec = make_recipe().synth
    assert spec.task_shares == {"qa": 0.4, "rag": 0.3, "summ": 0.3}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"endpoint": "http://127.0.0.1:1/v1"}, "needs 'endpoint_model'"),
        ({"endpoint_model": "x"}, "apply only with 'endpoint'"),
        ({"task_shares": {"qa": 0.5, "rag": 0.6, "summ": -0.1}}, "must not be negative"),
        ({"task_shares": {"qa": 0.5}}, "must sum to 1"),
        ({"task_shares": {"quiz": 1.0}}, "synth.task_shares"),
        ({"chunk_tokens": 2048}, "chunk_tokens .* <= min_doc_tokens"),
        ({"min_doc_tokens": "4K", "max_doc_tokens": "2K"}, "min_doc_tokens .* <= max_doc_tokens"),
        ({"source_domains": ["nope"]}, "unknown domain 'nope'"),
        ({"temperature": 0.7}, "synth.temperature: unknown key"),
    ],
)
def test_bad_sections_name_the_key(make_recipe, overrides: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        make_recipe(**overrides)


def test_warns_when_the_sft_length_cannot_hold_the_documents(make_recipe) -> None:
    from prolong.synth.pipeline import fit_warnings

    assert fit_warnings(make_recipe()) == []  # 1024-token documents in 4096-token sequences
    [warning] = fit_warnings(make_recipe(max_doc_tokens="4K"))
    assert "stage 'sft' packs to seq_len=4096" in warning and "max_doc_tokens=4096" in warning
    assert fit_warnings(make_recipe(synth_share=0, max_doc_tokens="4K")) == []  # synth not in the mix
