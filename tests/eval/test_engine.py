"""The chunked-prefill engine decodes exactly what `model.generate` decodes greedily."""

from __future__ import annotations

import pytest
import torch

from prolong.eval.engine import HFEngine, load_for_generation


@pytest.fixture(scope="module")
def model_and_tokenizer(model_dir):
    return load_for_generation(str(model_dir), dtype="float32", device="cpu")


def _reference(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=None, pad_token_id=2)
    return out[0, len(prompt):].tolist()


@pytest.mark.filterwarnings("error:.*past_key_values.*:FutureWarning")  # the cache goes by its current name
def test_chunked_prefill_matches_generate(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    engine = HFEngine(model, tokenizer, prefill_chunk=16)
    engine.eos_ids = set()  # a random model may emit EOS at any step; compare full continuations
    prompt = torch.randint(5, len(tokenizer), (50,), generator=torch.Generator().manual_seed(0)).tolist()
    with engine._attention_for(1):
        logits_chunked = engine.prefill([prompt])[0]
    logits_full = model(torch.tensor([prompt])).logits[:, -1]
    torch.testing.assert_close(logits_chunked, logits_full, rtol=1e-4, atol=1e-4)
    tokens = engine._generate_batch([prompt], 12, stop_newline=False)
    assert tokens[0].num_tokens == 12
    assert tokenizer.decode(_reference(model, prompt, 12), skip_special_tokens=True) == tokens[0].text


def test_batched_left_padding_matches_single(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    engine = HFEngine(model, tokenizer, prefill_chunk=8, max_padding=0.5)
    engine.eos_ids = set()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(5, len(tokenizer), (n,), generator=g).tolist() for n in (30, 27, 24)]
    assert engine.batches([len(p) for p in prompts]) == [[0, 1, 2]]
    batched = engine.generate(prompts, max_new_tokens=6)
    single = [engine._generate_batch([p], 6, stop_newline=False)[0] for p in prompts]
    assert [b.text for b in batched] == [s.text for s in single]


def test_batches_respect_budget_and_padding() -> None:
    engine = HFEngine.__new__(HFEngine)
    engine.max_batch_tokens, engine.max_batch_size, engine.max_padding = 100, 8, 0.1
    groups = engine.batches([50, 49, 48, 30, 10, 10])
    assert groups == [[0, 1], [2], [3], [4, 5]]


def test_engine_restores_attention_implementation(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    HFEngine(model, tokenizer, prefill_chunk=8).generate([[5, 6, 7, 8, 9] * 4], max_new_tokens=2)
    assert model.config._attn_implementation == "sdpa"
