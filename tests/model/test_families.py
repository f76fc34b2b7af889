"""Every decoder family in the matrix is exact (packed == each document alone through its own eager
attention, logits and gradients) or refused with a clear message; docs/families.md matches the matrix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from family_cases import (
    ABLATION_MIN_CHANGE,
    DOC_PATH,
    FAMILIES,
    SWEEP_HEADING,
    TOLERANCE,
    installed_decoder_types,
    markdown,
    run_exact,
    run_refused,
    sweep_one,
)

EXACT = [f for f in FAMILIES if f.refused is None]
REFUSED = [f for f in FAMILIES if f.refused is not None]


@pytest.mark.parametrize("family", EXACT, ids=[f.name for f in EXACT])
def test_family_packed_equals_documents_alone(family) -> None:
    result = run_exact(family)
    assert result["logits"] <= TOLERANCE, result
    assert result["grads"] <= TOLERANCE, result
    assert result["leak"] > ABLATION_MIN_CHANGE, f"documents do not matter in this setup: {result}"
    for key, change in result.items():
        if key.startswith("ablation"):
            assert change > ABLATION_MIN_CHANGE, (
                f"{key} does not change the model, so it is not tested: {result}"
            )


@pytest.mark.parametrize("family", REFUSED, ids=[f.name for f in REFUSED])
def test_family_is_refused_with_a_clear_message(family) -> None:
    message = run_refused(family)
    assert re.search(family.refused, message), message
    assert family.model_type in message  # names the family


def test_families_doc_is_current() -> None:
    assert DOC_PATH.read_text(encoding="utf-8").startswith(markdown()), (
        "docs/families.md is stale: run `python tests/model/family_cases.py --write`"
    )


@pytest.mark.slow
@pytest.mark.parametrize("model_type", installed_decoder_types())
def test_every_installed_decoder_family_is_exact_or_refused(model_type) -> None:
    """The sweep: every other causal-LM type of the installed transformers, generic tiny config. sweep_one
    fails on a silent change, or when prolong fails where the family's own eager attention runs."""
    status, detail = sweep_one(model_type)
    doc = DOC_PATH.read_text(encoding="utf-8")
    if SWEEP_HEADING in doc:
        assert f"| `{model_type}` | {status} |" in doc, f"docs/families.md disagrees: {status} {detail}"


@pytest.mark.distributed
def test_families_through_ulysses_with_two_ranks(tmp_path, torchrun) -> None:
    """The exact rows again, sequence-parallel over 2 ranks (gloo): the Ulysses exchange around the same
    adapter keeps every family's features (windows, soft-capping, per-head sinks split across ranks)."""
    torchrun(Path(__file__).parents[1] / "parallel" / "families_sp_worker.py", 2, str(tmp_path))
    results = json.loads((tmp_path / "families_sp.json").read_text(encoding="utf-8"))
    assert sorted(results) == sorted(f.name for f in EXACT if f.sequence_parallel)
    for name, result in results.items():
        assert result["logits"] <= TOLERANCE and result["grads"] <= TOLERANCE, (name, result)


def test_hybrid_layers_are_allowed_for_one_causal_sequence() -> None:
    """Layers that mix tokens outside attention only break packed documents: the cross_document batch
    mode (one causal sequence) accepts them, while the mask patterns prolong cannot build stay refused."""
    from family_cases import build

    from prolong.model.attention import UnsupportedAttentionError, check_attention_support

    by_name = {f.name: f for f in FAMILIES}
    check_attention_support(build(by_name["lfm2"]), documents=False)
    with pytest.raises(UnsupportedAttentionError, match="chunked attention"):
        check_attention_support(build(by_name["llama4_text"]), documents=False)
