"""The decoder-family matrix: tiny models of each family, packed through prolong vs each document alone.

Imported by tests/model/test_families.py and by tests/parallel/families_sp_worker.py (the Ulysses run of
the same matrix, 2 ranks). Each case builds a tiny float32 model (2 layers, hidden 64, 4 query heads, 2 KV heads) from the
family's own config class with the features that matter for attention switched on (a sliding window
shorter than a document, soft-capping, sinks, rope scaling...), and either

- exact: a packed row of several documents through prolong's attention gives the logits and gradients
  of every document run alone through the family's own eager attention (1e-5, float32), and each
  ablation (the feature switched off on the same weights) moves the eager result by more than 1e-3,
  so the comparison would catch a dropped feature; or
- refused: prolong raises UnsupportedAttentionError matching `refused`.

`python tests/model/family_cases.py --write` regenerates docs/families.md from this list and the slow
sweep of every other installed decoder type (minutes); `--write-curated` only the list's part. The test
checks the file is current.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from prolong.model.attention import UnsupportedAttentionError, check_attention_support, register_attention
from prolong.model.batch import PackedBatch, attention_kwargs, make_packed_batch

DOC_LENS = [7, 13, 5, 9]  # 34 tokens: several documents, an even total for 2 ranks
WINDOW = 4  # sliding window shorter than every document but one
VOCAB = 128
TOLERANCE = 1e-5
KERNEL_TOLERANCE = 1e-4  # sweep only: prolong's kernels vs eager on the same single document
ABLATION_MIN_CHANGE = 1e-3
DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "families.md"

TINY: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 256,
    "attention_dropout": 0.0,
    "tie_word_embeddings": False,
    # weights large enough that attention patterns (and so every attention feature) matter
    "initializer_range": 0.1,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
HYBRID_LAYERS = ["sliding_attention", "full_attention"]
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8,
}


def _no_sinks(model: PreTrainedModel) -> None:
    """Ablation of gpt-oss sinks: a logit of -inf takes no probability mass."""
    for module in model.modules():
        if isinstance(getattr(module, "sinks", None), torch.nn.Parameter):
            module.sinks.data.fill_(-math.inf)


def _strong_sinks(model: PreTrainedModel) -> None:
    """Sinks of the size trained models have (the random init is ~0.1), so they change the softmax a lot."""
    generator = torch.Generator().manual_seed(5)
    for module in model.modules():
        if isinstance(getattr(module, "sinks", None), torch.nn.Parameter):
            module.sinks.data.copy_(torch.randn(module.sinks.shape, generator=generator) * 2)


@dataclasses.dataclass(frozen=True)
class Family:
    """One row of the matrix."""

    name: str  # row label (several rows may share a model type)
    model_type: str
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    features: str = ""  # what the row exercises, for the table
    # ablations: label -> config overrides, or a function that edits the weights in place
    ablations: dict[str, dict[str, Any] | Callable[[PreTrainedModel], None]] = dataclasses.field(
        default_factory=dict
    )
    prepare: Callable[[PreTrainedModel], None] | None = None  # edits the weights after init
    refused: str | None = None  # regex of the refusal; None: must be exact
    reason: str = ""  # why refused, for the table
    sequence_parallel: bool = True  # part of the Ulysses matrix (exact rows only)


FAMILIES: list[Family] = [
    Family("llama", "llama", features="plain RoPE, GQA"),
    Family(
        "llama-3.1",
        "llama",
        {"rope_parameters": LLAMA3_ROPE},
        "llama3 rope scaling",
        {"default rope": {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}},
    ),
    Family(
        "mistral",
        "mistral",
        {"sliding_window": WINDOW},
        f"sliding window {WINDOW} < document",
        {"no window": {"sliding_window": None}},
    ),
    Family(
        "qwen2",
        "qwen2",
        {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1},
        "sliding window on layer 2, qkv bias",
        {"no window": {"use_sliding_window": False, "layer_types": ["full_attention"] * 2}},
    ),
    Family("qwen3", "qwen3", features="q/k norm"),
    Family(
        "qwen3_moe",
        "qwen3_moe",
        {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "decoder_sparse_step": 1},
        "mixture of experts, q/k norm",
    ),
    Family("gemma", "gemma", features="scaled embeddings, GeGLU"),
    Family(
        "gemma2",
        "gemma2",
        {
            "attn_logit_softcapping": 1.0,
            "final_logit_softcapping": 30.0,
            "query_pre_attn_scalar": 8,
            "sliding_window": WINDOW,
            "layer_types": HYBRID_LAYERS,
        },
        "attention soft-capping, sliding/full layers, query_pre_attn_scalar",
        {
            "no softcap": {"attn_logit_softcapping": None},
            "no window": {"layer_types": ["full_attention"] * 2},
        },
    ),
    Family(
        "gemma3_text",
        "gemma3_text",
        {"sliding_window": WINDOW, "layer_types": HYBRID_LAYERS, "query_pre_attn_scalar": 8},
        "sliding/full layers with their own RoPE bases, q/k norm",
        {"no window": {"layer_types": ["full_attention"] * 2}},
    ),
    Family(
        "phi3",
        "phi3",
        {"sliding_window": WINDOW},
        "fused qkv, sliding window",
        {"no window": {"sliding_window": None}},
    ),
    Family("olmo2", "olmo2", features="q/k norm over all heads"),
    Family(
        "granite",
        "granite",
        {
            "attention_multiplier": 0.5,
            "embedding_multiplier": 2.0,
            "residual_multiplier": 0.5,
            "logits_scaling": 2.0,
        },
        "attention_multiplier as scaling",
        {"default scaling": {"attention_multiplier": 0.25}},
    ),
    Family("cohere", "cohere", features="parallel attention/MLP block, logit scale"),
    Family(
        "cohere2",
        "cohere2",
        {"sliding_window": WINDOW, "layer_types": HYBRID_LAYERS},
        "sliding layers with RoPE, full layers without",
        {"no window": {"layer_types": ["full_attention"] * 2}},
    ),
    Family(
        "stablelm",
        "stablelm",
        refused="does not route its attention through transformers' attention registry",
        reason="transformers declares no attention-backend support for it (_supports_attention_backend is "
        "False), so prolong cannot rely on its attention being the one called",
    ),
    Family("gpt_neox", "gpt_neox", features="partial rotary, parallel residual"),
    Family(
        "gpt_oss",
        "gpt_oss",
        {
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "sliding_window": WINDOW,
            "layer_types": HYBRID_LAYERS,
        },
        "attention sinks (s_aux), sliding/full layers, MoE",
        {"no sinks": _no_sinks, "no window": {"layer_types": ["full_attention"] * 2}},
        prepare=_strong_sinks,
    ),
    Family(
        "deepseek_v3",
        "deepseek_v3",
        {
            "head_dim": 8,  # the rotary part of the query/key heads
            "num_key_value_heads": 4,
            "q_lora_rank": 32,
            "kv_lora_rank": 16,
            "qk_rope_head_dim": 8,
            "qk_nope_head_dim": 8,
            "v_head_dim": 24,
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "n_group": 1,
            "topk_group": 1,
            "first_k_dense_replace": 1,
            "moe_intermediate_size": 32,
        },
        "multi-head latent attention (value heads 24 wide, query/key 16), MoE",
    ),
    Family(
        "gemma3_text bidirectional",
        "gemma3_text",
        {"use_bidirectional_attention": True},
        refused="is_causal=False",
        reason="bidirectional attention: prolong's attention is causal",
    ),
    Family(
        "qwen3_next",
        "qwen3_next",
        {
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "layer_types": ["linear_attention", "full_attention"],
        },
        refused="does not route its attention through transformers' attention registry",
        reason="hybrid: Gated DeltaNet layers carry state across packed documents (and transformers marks "
        "its attention as outside the registry)",
    ),
    Family(
        "lfm2",
        "lfm2",
        {"layer_types": ["conv", "full_attention"]},
        refused="'conv' layers",
        reason="short-convolution layers carry state across packed documents (allowed in the cross_document "
        "batch mode, one causal sequence)",
    ),
    Family(
        "llama4_text",
        "llama4_text",
        {"attention_chunk_size": 8, "num_local_experts": 2, "intermediate_size_mlp": 128},
        refused="chunked attention",
        reason="chunked attention lives in a mask prolong's attention does not build",
    ),
    Family(
        "bloom",
        "bloom",
        {"n_head": 4, "n_layer": 2},
        refused="does not route its attention through transformers' attention registry",
        reason="ALiBi attention computed inside the layer: prolong's attention would never be called",
    ),
]


def tiny_config(family: Family, **extra: Any):
    """The family's own config class with the tiny sizes and the row's overrides."""
    return AutoConfig.for_model(family.model_type, **{**TINY, **family.overrides, **extra})


def build(family: Family, config=None) -> PreTrainedModel:
    """A tiny float32 model of the family (seeded; eager attention), in eval mode (no dropout)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        config if config is not None else tiny_config(family),
        attn_implementation="eager",
        dtype=torch.float32,
    )
    if family.prepare is not None:
        family.prepare(model)
    return model.eval()


def packed_batch(seed: int = 0) -> PackedBatch:
    ids = torch.randint(3, VOCAB, (sum(DOC_LENS),), generator=torch.Generator().manual_seed(seed))
    return make_packed_batch(ids, DOC_LENS)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def documents_alone(
    model: PreTrainedModel, batch: PackedBatch, attention: str = "eager"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits [T, V] of every document run alone (through the family's own eager attention by default),
    and the gradients of the summed next-token loss."""
    model.set_attn_implementation(attention)
    logits, start = [], 0
    for n in DOC_LENS:
        ids = batch.input_ids[:, start : start + n]
        doc_logits = model(input_ids=ids, use_cache=False).logits[0]
        loss = F.cross_entropy(
            doc_logits, batch.labels[0, start : start + n], ignore_index=-100, reduction="sum"
        )
        loss.backward()
        logits.append(doc_logits.detach())
        start += n
    return torch.cat(logits), _grads(model)


def packed(
    model: PreTrainedModel, batch: PackedBatch, attention: str
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and gradients of the packed row through the registered `attention`."""
    check_attention_support(model)
    model.set_attn_implementation(attention)
    logits = model(input_ids=batch.input_ids, **attention_kwargs(batch)).logits[0]
    F.cross_entropy(logits, batch.labels[0], ignore_index=-100, reduction="sum").backward()
    return logits.detach(), _grads(model)


def difference(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest absolute difference, relative to the reference's scale when that is above 1 (float32
    rounding grows with the magnitude: Gemma's logits reach the tens)."""
    return float((got - want).abs().max()) / max(1.0, float(want.abs().max()))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """`difference` over two gradient dicts of the same parameters."""
    if a.keys() != b.keys() or not a:
        raise AssertionError(f"different parameters got gradients: {sorted(set(a) ^ set(b))}")
    return max(difference(a[k], b[k]) for k in a)


def ablation_change(family: Family, label: str, batch: PackedBatch, reference: torch.Tensor) -> float:
    """How far the eager documents-alone logits move when the ablation switches the feature off."""
    ablation = family.ablations[label]
    base = build(family)
    if callable(ablation):
        model = base
        ablation(model)
    else:
        config = copy.deepcopy(base.config)
        for key, value in ablation.items():
            setattr(config, key, value)
        if "rope_parameters" in ablation and hasattr(config, "validate_rope"):
            config.validate_rope()
        model = build(family, config)
        model.load_state_dict(base.state_dict())
    logits, _ = documents_alone(model, batch)
    return float((logits - reference).abs().max())


def run_exact(family: Family) -> dict[str, float]:
    """Compare one exact family; returns the measured differences (the caller asserts the bounds)."""
    model = build(family)
    batch = packed_batch()
    got_logits, got_grads = packed(model, batch, register_attention())
    want_logits, want_grads = documents_alone(model, batch)
    # the packed row through plain eager attention lets documents see each other (an all-ones mask stops
    # transformers from detecting the packing), so the comparison can fail
    model.set_attn_implementation("eager")
    ones = torch.ones_like(batch.input_ids)
    leaked = model(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=ones).logits[0]
    result = {
        "logits": difference(got_logits, want_logits),
        "grads": max_difference(got_grads, want_grads),
        "leak": float((leaked.detach() - want_logits).abs().max()),
    }
    for label in family.ablations:
        result[f"ablation: {label}"] = ablation_change(family, label, batch, want_logits)
    return result


def run_refused(family: Family) -> str:
    """The refusal message for a refused family (raises AssertionError if nothing is refused)."""
    model = build(family)
    try:
        packed(model, packed_batch(), register_attention())
    except UnsupportedAttentionError as error:
        return str(error)
    raise AssertionError(f"{family.name}: expected a refusal matching {family.refused!r}, got none")


def installed_decoder_types() -> list[str]:
    """Every model type transformers maps to a causal LM, minus the curated rows' own model types."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    curated = {f.model_type for f in FAMILIES}
    return sorted(t for t in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if t not in curated)


def sweep_one(model_type: str) -> tuple[str, str]:
    """(status, detail) of an installed model type built with the generic tiny sizes and, when its config
    has one, the short sliding window: exact | refused | not built (the generic tiny config does not make
    a working decoder of it). Raises AssertionError when prolong changes the model silently, or fails
    where the family's own eager attention runs."""
    try:
        config = AutoConfig.for_model(model_type, **TINY)
        if getattr(config, "is_encoder_decoder", False):
            return "not built", "encoder-decoder"
        if getattr(config, "sub_configs", None):
            return "not built", "composite (vision/audio towers): its text model is its own row"
        if getattr(config, "sliding_window", None) is not None:
            config.sliding_window = WINDOW
        model = build(Family(model_type, model_type), config)
        batch = packed_batch()
        model(input_ids=batch.input_ids[:, : DOC_LENS[0]], use_cache=False)  # the eager model itself works
    except Exception as error:  # noqa: BLE001 - any failure here means the generic config does not fit
        return "not built", f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"
    try:
        got_logits, got_grads = packed(model, batch, register_attention())
    except UnsupportedAttentionError as error:
        first_sentence = str(error).split(". ")[0]
        return "refused", first_sentence.split(") ", 1)[-1]  # without the "type (Class)" prefix
    want_logits, want_grads = documents_alone(model, batch)
    eager = max(difference(got_logits, want_logits), max_difference(got_grads, want_grads))
    if eager <= TOLERANCE:
        return "exact", ""
    # Above 1e-5 from eager: tell packing apart from kernel rounding (SDPA vs eager's matmuls, amplified by
    # e.g. Gemma-4's scales): packed must equal each document alone through prolong's own attention.
    mine_logits, mine_grads = documents_alone(model, batch, register_attention())
    packing = max(difference(got_logits, mine_logits), max_difference(got_grads, mine_grads))
    kernel = max(difference(mine_logits, want_logits), max_difference(mine_grads, want_grads))
    assert packing <= TOLERANCE and kernel <= KERNEL_TOLERANCE, (
        f"{model_type} silently changed: {packing=}, {kernel=}"
    )
    return "exact", f"packing exact ({packing:.0e}); prolong vs eager kernels {kernel:.0e} (rounding)"


SWEEP_HEADING = "## Every other decoder family of the installed transformers (slow sweep)"


def markdown(sweep: dict[str, tuple[str, str]] | None = None) -> str:
    """docs/families.md: the curated matrix from FAMILIES, then (when given) the sweep's rows."""
    import transformers

    lines = [
        "# Decoder families",
        "",
        "Generated by `python tests/model/family_cases.py --write` from the family matrix that",
        "`tests/model/test_families.py` runs on every `make test` (one process, and Ulysses over 2 ranks",
        f"with gloo), with transformers {transformers.__version__}. **exact**: a packed row of",
        f"{len(DOC_LENS)} documents through prolong's attention gives the logits and gradients of each document run",
        f"alone through the family's own eager attention (within {TOLERANCE:g} float32, relative above 1), and switching the listed",
        "feature off moves the result by more than 1e-3 (the test would see a dropped feature). **refused**:",
        "prolong stops with a message naming the family and the argument; nothing is changed silently.",
        "",
        "| family | model type | result | Ulysses SP=2 | what the row exercises / why refused |",
        "|---|---|---|---|---|",
    ]
    for family in FAMILIES:
        if family.refused is None:
            sp = "exact" if family.sequence_parallel else "not tested"
            lines.append(f"| {family.name} | `{family.model_type}` | exact | {sp} | {family.features} |")
        else:
            lines.append(f"| {family.name} | `{family.model_type}` | refused | refused | {family.reason} |")
    lines += [
        "",
        "Attention backends: every exact row holds for `sdpa_per_doc` (CPU, measured here). On GPU, `varlen`",
        "refuses soft-capping and sinks (auto then picks `flash_attn`, which applies soft-capping, or the",
        "exact per-document path); `flash_attn` refuses sinks.",
        "",
    ]
    if sweep:
        counts = {
            status: sum(1 for s, _ in sweep.values() if s == status)
            for status in ("exact", "refused", "not built")
        }
        lines += [
            SWEEP_HEADING,
            "",
            "`pytest -m slow tests/model/test_families.py` builds every other model type transformers maps to a",
            "causal LM with the same tiny sizes (and a sliding window of 4 where the config has one), without",
            "family-specific settings or ablations: exact (logits and gradients, 1e-5) or refused, never silently",
            "different (where eager and prolong's kernels round apart by more than 1e-5, packing is checked",
            "against each document alone through prolong's attention, and the kernels against eager within 1e-4).",
            "*not built*: the generic tiny config does not make a working decoder of that type (its own",
            f"eager forward fails, or it is an encoder-decoder or composite model). {counts['exact']} exact,",
            f"{counts['refused']} refused, {counts['not built']} not built.",
            "",
            "| model type | result | detail |",
            "|---|---|---|",
        ]
        for model_type, (status, detail) in sorted(sweep.items()):
            lines.append(f"| `{model_type}` | {status} | {detail.replace('|', '/').strip()} |")
        lines.append("")
    return "\n".join(lines)


def _sweep_rows_in_doc() -> dict[str, tuple[str, str]]:
    """The sweep rows docs/families.md holds now (for --write-curated)."""
    text = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.exists() else ""
    rows = {}
    for line in text.split(SWEEP_HEADING, 1)[-1].splitlines() if SWEEP_HEADING in text else []:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    return rows


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-curated"]:  # the curated matrix only; keeps the sweep rows already there
        keep = set(installed_decoder_types())
        DOC_PATH.write_text(
            markdown({k: v for k, v in _sweep_rows_in_doc().items() if k in keep}), encoding="utf-8"
        )
        print(f"wrote {DOC_PATH}")
    elif sys.argv[1:] == ["--write"]:  # curated matrix and the slow sweep (minutes)
        import warnings

        from transformers.utils import logging as hf_logging

        warnings.filterwarnings("ignore")
        hf_logging.set_verbosity_error()
        rows = {}
        for model_type in installed_decoder_types():
            rows[model_type] = sweep_one(model_type)
            print(model_type, *rows[model_type], flush=True)
        DOC_PATH.write_text(markdown(rows), encoding="utf-8")
        print(f"wrote {DOC_PATH}")
    else:
        print(markdown())
