"""A quick, generous upper bound of one stage's per-device memory, from the model's config alone.

`prolong train` dry-runs each stage before it loads weights (a `prolong plan` subprocess, seconds of
CPU). For a model far below its device's size (a tiny recipe on a laptop, a 1B model on an 80 GiB GPU)
the answer is known without it: when this bound fits, the dry run is skipped and the bound is printed
instead. The bound assumes the worst case at every term, so it can only be too high, never too low:

- state: float32 parameters, gradients and both AdamW moments, plus an unsharded gathered copy of the
  parameters and of their gradients (no sharding credited): 24 bytes per parameter;
- activations: every layer's saved tensors without checkpointing, in float32, at the whole micro-batch
  (the sequence, or training.microbatch_tokens when larger; no sequence-parallel split credited):
  16 x hidden + 4 x intermediate values per token and layer;
- attention: explicit float32 scores, probabilities and their gradient for one document as long as
  the sequence, for all heads (the per-document math path's worst case);
- loss: four float32 [chunk, vocab] blocks of the chunked cross-entropy;
- then x2 for temporaries and allocator slack.

A config this cannot read (no hidden size, mixtures of experts, anything unusual) gets no bound: the
dry run decides.
"""

from __future__ import annotations

from typing import Any

from prolong.config import StageSpec, TrainingSpec

_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def memory_upper_bound(config: Any, stage: StageSpec, training: TrainingSpec) -> int | None:
    """Bytes per device that one optimizer step of `stage` cannot exceed, or None when not boundable."""
    if any(not isinstance(getattr(config, name, None), int) for name in _FIELDS):
        return None
    if any(getattr(config, name, None) for name in ("num_experts", "num_local_experts", "n_routed_experts")):
        return None
    hidden, layers = config.hidden_size, config.num_hidden_layers
    heads, vocab = config.num_attention_heads, config.vocab_size
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    if not isinstance(intermediate, int):
        return None
    # q, k, v, o at most hidden x hidden each; gate, up, down; norms; input and output embeddings
    params = layers * (4 * hidden * hidden + 3 * hidden * intermediate + 2 * hidden) + 2 * vocab * hidden + hidden
    # a micro-batch: one packed sequence, or several joined up to training.microbatch_tokens (their
    # documents stay separate: the attention term keeps one document of at most seq_len)
    tokens = max(stage.seq_len, training.microbatch_tokens or 0)
    state = 24 * params
    activations = 4 * tokens * layers * (16 * hidden + 4 * intermediate)
    attention = 4 * 3 * heads * stage.seq_len * stage.seq_len
    loss = 4 * 4 * min(tokens, training.loss_chunk_tokens) * vocab
    return 2 * (state + activations + attention + loss)
