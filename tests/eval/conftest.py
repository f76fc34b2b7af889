"""Session fixtures: a byte-level BPE tokenizer trained here and a tiny random Llama saved beside it."""

from __future__ import annotations

from pathlib import Path

import pytest

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _training_text() -> list[str]:
    from prolong.eval.synthetic import NOISE
    from prolong.eval.words import word_list

    lines = [NOISE] * 50 + [" ".join(word_list(kind)[i:i + 50]) for kind in ("noun", "adjective", "verb")
                            for i in range(0, 3000, 50)]
    lines += [f"{i} {i * 7919 % 100000} One of the special magic numbers for is: Document Title" for i in range(500)]
    licenses = Path("/usr/share/common-licenses")
    if licenses.exists():
        lines += [p.read_text(errors="replace") for p in sorted(licenses.iterdir())[:4] if p.is_file()]
    return lines


def build_tiny_model(path: Path) -> Path:
    """Write a tokenizer (chat template included) and a tiny random LlamaForCausalLM to `path`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<pad>", "<|end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_training_text(), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=65536,
                         bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    """The test machine is shared: extra intra-op threads only contend (tiny ops got 100x slower)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with a tokenizer and a tiny random Llama."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)
