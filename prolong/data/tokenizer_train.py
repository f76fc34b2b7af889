"""Train a small byte-level BPE tokenizer offline (demos and tests), loadable with AutoTokenizer."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from prolong.publish import staged_dir

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
SPECIAL_TOKENS = [BOS, EOS, PAD, *ROLE_TOKENS]

# One turn is "<|role|>\n{content}<|end|>\n". The assistant's content and its <|end|> are wrapped in
# {% generation %} so transformers can return an assistant mask too; prolong computes its own mask
# from rendered prefixes (prolong.data.chat), which works for any model's template.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|end|>' }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def train_tokenizer(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int = 4096, name: str = "prolong-bpe"
) -> Path:
    """Train a byte-level BPE on `texts` and save it (tokenizer.json + config) into `out_dir`.

    The saved tokenizer adds BOS at the start of encoded text (like Llama), has EOS/PAD and chat role
    markers as special tokens, and carries a chat template.
    """
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=ROLE_TOKENS,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1 << 30,
        name_or_path=name,
    )
    out = Path(out_dir)
    with staged_dir(out) as staged:  # resolve_tokenizer trusts a tokenizer.json that exists
        wrapped.save_pretrained(staged.path)
    return out
