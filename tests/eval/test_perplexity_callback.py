"""Perplexity by position equals a plain full forward; the training callback runs a small suite."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from prolong.config import EvalSpec
from prolong.eval import make_eval_callback
from prolong.eval.engine import load_for_generation
from prolong.eval.perplexity import perplexity_by_position, token_losses
from prolong.eval.runner import SPEC_FILE


@pytest.fixture(scope="module")
def model_and_tokenizer(model_dir):
    return load_for_generation(str(model_dir), dtype="float32", device="cpu")


@pytest.mark.filterwarnings("error:.*past_key_values.*:FutureWarning")  # the cache goes by its current name
def test_chunked_losses_match_full_forward(model_and_tokenizer) -> None:
    model, _ = model_and_tokenizer
    ids = torch.randint(5, 1000, (300,), generator=torch.Generator().manual_seed(0)).tolist()
    chunked = token_losses(model, ids, last_n=100, chunk=64)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    full = F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none")[-100:]
    torch.testing.assert_close(chunked, full, rtol=1e-4, atol=1e-4)


def test_perplexity_buckets(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    texts = ["short", " ".join(f"word{i} is here." for i in range(400))]
    result = perplexity_by_position(model, tokenizer, texts, seq_len=512, last_n=256, num_buckets=4, chunk=128)
    assert result["documents"] == 1 and [b["start"] for b in result["buckets"]] == [256, 320, 384, 448]
    mean = sum(b["loss"] for b in result["buckets"]) / 4
    assert result["loss"] == pytest.approx(mean) and result["perplexity"] == pytest.approx(math.exp(mean))


def test_eval_callback(model_and_tokenizer, tmp_path) -> None:
    model, tokenizer = model_and_tokenizer
    model.train()
    spec = EvalSpec(tasks=["json_kv", "ruler_niah_s_1"], lengths=[1024], every_n_steps=5, num_examples=1,
                    engine="vllm")
    callback = make_eval_callback(spec, tmp_path)
    assert callback(model, tokenizer, 3) == {}
    metrics = callback(model, tokenizer, 5)
    assert set(metrics) == {"eval/json_kv@1024", "eval/ruler_niah_s_1@1024"}
    assert model.training and (tmp_path / "step_5" / "json_kv_1024.json").exists()
    # the suite the hook ran is recorded: hf on the in-memory model, base prompting (chat not set)
    saved = yaml.safe_load((tmp_path / "step_5" / SPEC_FILE).read_text())["eval"]
    assert saved["engine"] == "hf" and saved["chat"] is False and saved["tasks"] == spec.tasks


def test_eval_callback_trims_the_suite(model_and_tokenizer, tmp_path) -> None:
    model, tokenizer = model_and_tokenizer
    spec = EvalSpec(tasks=["ruler_niah_s_1"], lengths=[512], every_n_steps=1, num_examples=25, chat=True)
    make_eval_callback(spec, tmp_path)(model, tokenizer, 1)
    saved = yaml.safe_load((tmp_path / "step_1" / SPEC_FILE).read_text())["eval"]
    assert saved["num_examples"] == 10 and saved["chat"] is True  # at most 10 examples; chat kept when set
    assert len(json.loads((tmp_path / "step_1" / "ruler_niah_s_1_512.json").read_text())["rows"]) == 10
