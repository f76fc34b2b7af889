"""The recipe: one YAML file describing a whole run, validated up front.

Every field carries a one-line description. Unknown keys are errors (a typo must not be silently
ignored); errors name the key path, the bad value and what is allowed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from prolong.errors import UserError
from prolong.layout import check_head_layout, validate_sequence_parallel

K, M, B = 2**10, 2**20, 2**30
_SUFFIXES = {"": 1, "K": K, "M": M, "B": B, "G": B}


def parse_count(value: Any) -> Any:
    """Read token counts such as 65536, "64K", "4M", "20B" (K = 2^10, M = 2^20, B = 2^30)."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMBG]?)\s*", value.upper())
        if not match:
            raise ValueError(f"expected a token count like 65536, '64K', '4M' or '20B', got {value!r}")
        number, suffix = match.groups()
        scaled = float(number) * _SUFFIXES[suffix]
        if scaled != int(scaled):
            raise ValueError(f"{value!r} is not a whole number of tokens")
        return int(scaled)
    return value


TokenCount = Annotated[int, BeforeValidator(parse_count), Field(gt=0)]


def format_count(n: float) -> str:
    """Human form of a token count: 4194304 -> '4M', 65536 -> '64K', 20971520000 -> '19.5B'."""
    for suffix, size in (("B", B), ("M", M), ("K", K)):
        if n >= size:
            value = n / size
            return f"{value:.0f}{suffix}" if value == int(value) else f"{value:.3g}{suffix}"
    return str(int(n))


class Strict(BaseModel):
    """Base for every recipe section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------- model
class TinyModel(Strict):
    """A randomly initialised model built from a small config (demos and tests; no download)."""

    architecture: Literal["llama", "qwen2", "mistral"] = Field("llama", description="HF model family")
    hidden_size: int = Field(64, gt=0, description="width of the residual stream")
    intermediate_size: int = Field(172, gt=0, description="width of the MLP")
    num_hidden_layers: int = Field(2, gt=0, description="decoder layers")
    num_attention_heads: int = Field(4, gt=0, description="query heads")
    num_key_value_heads: int = Field(2, gt=0, description="key/value heads (grouped-query attention)")
    max_position_embeddings: int = Field(512, gt=0, description="original context length")
    rope_theta: float = Field(10000.0, gt=0, description="original RoPE base frequency")

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModel:
        check_head_layout(self.num_attention_heads, self.num_key_value_heads, self.hidden_size)
        return self


class ModelSpec(Strict):
    """The model to extend: a local Hugging Face checkpoint directory, or a tiny config to initialise."""

    path: str | None = Field(None, description="local HF checkpoint directory (safetensors)")
    init: TinyModel | None = Field(None, description="build a random model from this config instead")
    config: str | None = Field(
        None,
        description="shape of `path` for `prolong plan` when the checkpoint is not on this machine: a config "
        "shipped with prolong (llama-3-8b, llama-3.1-8b, qwen2.5-7b) or a config.json path; the "
        "checkpoint's own config.json wins when present",
    )
    dtype: Literal["float32", "bfloat16"] = Field("bfloat16", description="parameter/compute dtype on GPU")
    trust_remote_code: bool = Field(False, description="run model code shipped with the checkpoint")

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.path is None) == (self.init is None):
            raise ValueError("give exactly one of 'path' (a local checkpoint) or 'init' (a tiny config)")
        if self.config is not None and self.init is not None:
            raise ValueError("'config' gives the shape of 'path'; an 'init' model has its shape in 'init'")
        return self


class TokenizerSpec(Strict):
    """Tokenizer: the model's own by default, or one trained locally for demos."""

    path: str | None = Field(None, description="local tokenizer directory; default: the model path")
    train_vocab_size: int | None = Field(
        None, gt=255, description="train a byte-level BPE of this size on the recipe's data (demos)"
    )


# ---------------------------------------------------------------------------------------------- data
class SourceSpec(Strict):
    """One raw corpus, read as a stream."""

    type: Literal["jsonl", "parquet", "hf_disk", "text_dir", "code_repos", "mds"] = Field(
        description="jsonl (.jsonl/.gz/.zst), parquet, a dataset saved with save_to_disk, a directory "
        "of text files, a directory whose subdirectories are code repositories, or mds: a "
        "mosaicml-streaming MDS directory of token ids (index.json + shards, nested folders allowed): "
        "packed sequences (an `indices` column, ProLong's released data) are trained on as they are, "
        "unpacked documents (`input_ids` only) are packed like any other source"
    )
    path: str = Field(description="file, glob or directory")
    text_field: str = Field("text", description="field holding the document text")
    group_field: str | None = Field(
        None,
        description="rows sharing this value form one document (repository for Stack-style rows; "
        "book or subject for textbooks)",
    )
    name_field: str | None = Field(None, description="per-row name written before its text in a group")
    messages_field: str = Field("messages", description="field holding chat messages (sft domains)")
    prompt_field: str | None = Field(
        None,
        description="sft domains: rows are plain-text prompt/completion pairs (TRL's prompt-completion "
        "format) instead of chat messages: this field holds the prompt, `completion_field` the completion; "
        "no chat template, loss on the completion and EOS only",
    )
    completion_field: str = Field("completion", description="field holding the completion (with prompt_field)")
    max_documents: int | None = Field(None, gt=0, description="stop after this many documents")

    @model_validator(mode="after")
    def _mds_has_no_text_fields(self) -> SourceSpec:
        if self.type == "mds" and (self.group_field or self.name_field or self.prompt_field):
            raise ValueError(
                "group_field, name_field and prompt_field apply to text sources; an mds source holds token ids"
            )
        if self.prompt_field and (self.group_field or self.type in ("text_dir", "code_repos")):
            raise ValueError("prompt_field reads one prompt/completion pair a row: not with group_field, "
                             f"text_dir or code_repos (source {self.path!r})")
        return self


class LengthSampling(Strict):
    """UltraLong's length-based sampling within a domain."""

    threshold: TokenCount = Field(description="documents at least this long count as long")
    long_factor: float = Field(2.0, ge=0, description="sampling weight of documents above the threshold")
    short_factor: float = Field(0.5, ge=0, description="sampling weight of documents below it")


class DomainSpec(Strict):
    """A named data domain; its kind decides how it is packed."""

    name: str = Field(description="domain name used by stage mixtures")
    kind: Literal["long", "short", "sft"] = Field(
        description="long: single-document chunks of exactly the length; short: concatenated with "
        "carry-over; sft: chat conversations (or prompt/completion pairs) packed whole, loss on the "
        "assistant turns (the completions) only"
    )
    sources: list[SourceSpec] = Field(min_length=1, description="raw corpora of this domain")
    length_sampling: LengthSampling | None = Field(None, description="UltraLong length-based sampling")

    @model_validator(mode="after")
    def _prompts_in_sft(self) -> DomainSpec:
        if self.kind != "sft" and any(s.prompt_field for s in self.sources):
            raise ValueError(f"domain {self.name!r}: prompt_field is for sft domains (a loss on the completion "
                             f"only); a {self.kind} domain trains on every token of its text_field")
        return self

    @model_validator(mode="after")
    def _mds_alone(self) -> DomainSpec:
        if len({s.type == "mds" for s in self.sources}) > 1:
            raise ValueError(
                f"domain {self.name!r} mixes mds sources (token ids) with text sources; put them in two domains"
            )
        return self

    @property
    def is_mds(self) -> bool:
        """Its sources are MDS datasets of token ids (read without the tokenizer)."""
        return self.sources[0].type == "mds"


class DataSpec(Strict):
    """Raw domains and where their packed shards go."""

    shard_dir: str = Field("data", description="directory of packed shards (per stage, domain, length)")
    domains: list[DomainSpec] = Field(min_length=1, description="the data domains")
    num_workers: int | None = Field(None, ge=1, description="tokenizer processes; default: all cores")

    @model_validator(mode="after")
    def _unique_names(self) -> DataSpec:
        names = [d.name for d in self.domains]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"domain names must be unique; repeated: {duplicates}")
        return self


# -------------------------------------------------------------------------------------------- stages
class YarnSpec(Strict):
    """YaRN scaling written to the standard `rope_scaling` config."""

    factor: float = Field(gt=1, description="target length / original length")
    original_max_position_embeddings: int = Field(gt=0, description="length the model was trained at")
    beta_fast: float = Field(32.0, gt=0, description="YaRN beta_fast")
    beta_slow: float = Field(1.0, gt=0, description="YaRN beta_slow")


class RopeSpec(Strict):
    """Position extrapolation for a stage: a new RoPE base (ProLong) or YaRN (UltraLong)."""

    theta: float | None = Field(
        None,
        gt=0,
        description="new RoPE base frequency; an existing scaling (Llama-3.1 llama3, Qwen yarn) is kept "
        "and applies on the new base",
    )
    yarn: YarnSpec | None = Field(
        None,
        description="YaRN scaling instead of a theta change; replaces a default, llama3 or yarn scaling "
        "counted from the same original_max_position_embeddings (else refused)",
    )

    @model_validator(mode="after")
    def _one_method(self) -> RopeSpec:
        if (self.theta is None) == (self.yarn is None):
            raise ValueError("give exactly one of 'theta' or 'yarn'")
        return self


class MixtureEntry(Strict):
    """One component of a stage's mixture: a domain, optionally one length subset of it."""

    domain: str = Field(description="name of a domain in data.domains")
    proportion: float = Field(gt=0, le=1, description="share of the stage's tokens")
    doc_len: TokenCount | None = Field(
        None,
        description="length subset: long documents cut to chunks of this length and packed into "
        "stage-length sequences (default: the stage length)",
    )


class StageSpec(Strict):
    """One training stage: continued pretraining at a length, or SFT."""

    name: str = Field(description="stage name; its outputs go to output_dir/<name>")
    kind: Literal["pretrain", "sft"] = Field("pretrain", description="continued pretraining or SFT")
    seq_len: TokenCount = Field(description="tokens per packed sequence (one micro-batch)")
    tokens_per_step: TokenCount = Field(description="tokens per optimizer step (global batch)")
    steps: int | None = Field(None, gt=0, description="optimizer steps (or give total_tokens)")
    total_tokens: TokenCount | None = Field(None, description="tokens of the stage (or give steps)")
    lr: float = Field(gt=0, description="peak learning rate")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of steps with linear warmup")
    min_lr: float = Field(ge=0, description="learning rate at the end of the cosine decay")
    rope: RopeSpec | None = Field(None, description="position extrapolation; none keeps the model's")
    attention: Literal["document", "cross_document"] = Field(
        "document", description="document: no attention across documents; cross_document: plain causal"
    )
    sequence_parallel: int = Field(1, ge=1, description="Ulysses sequence-parallel degree")
    activation_checkpointing: bool = Field(True, description="recompute each decoder layer in backward")
    offload_activations: bool | None = Field(
        None, description="training.offload_activations for this stage (none: the training one)"
    )
    tiled_mlp: Literal["auto"] | bool | None = Field(
        None, description="training.tiled_mlp for this stage (none: the training one)"
    )
    offload_parameters: bool | None = Field(
        None, description="training.offload_parameters for this stage (none: the training one)"
    )
    tiled_norms: Literal["auto"] | bool | None = Field(
        None, description="training.tiled_norms for this stage (none: the training one)"
    )
    init_from: str = Field(
        "previous",
        description="'previous' (the previous stage, or the model for the first stage), 'model' (the "
        "recipe's model), the name of an earlier stage of this recipe, or the directory of a finished stage",
    )
    carry_optimizer_state: bool = Field(False, description="start from the init stage's AdamW state")
    mixture: list[MixtureEntry] = Field(min_length=1, description="domains and their token shares")

    @model_validator(mode="after")
    def _consistent(self) -> StageSpec:
        if (self.steps is None) == (self.total_tokens is None):
            raise ValueError("give exactly one of 'steps' or 'total_tokens'")
        if self.tokens_per_step % self.seq_len:
            raise ValueError(
                f"tokens_per_step={self.tokens_per_step} must be a multiple of seq_len={self.seq_len}"
            )
        if self.total_tokens is not None and self.total_tokens < self.tokens_per_step:
            raise ValueError(f"total_tokens={self.total_tokens} is less than one step")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr} is above lr={self.lr}")
        total = math.fsum(e.proportion for e in self.mixture)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"mixture proportions must sum to 1, they sum to {total:.6f}")
        for entry in self.mixture:
            if entry.doc_len is not None and (entry.doc_len > self.seq_len or self.seq_len % entry.doc_len):
                raise ValueError(
                    f"mixture entry {entry.domain!r}: doc_len={entry.doc_len} must divide seq_len={self.seq_len}"
                )
        keys = [(e.domain, e.doc_len or self.seq_len) for e in self.mixture]
        if len(set(keys)) != len(keys):
            raise ValueError("each (domain, doc_len) may appear only once in a mixture")
        return self

    @property
    def num_steps(self) -> int:
        """Optimizer steps of the stage."""
        if self.steps is not None:
            return self.steps
        assert self.total_tokens is not None  # the validator requires steps or total_tokens
        return self.total_tokens // self.tokens_per_step

    @property
    def sequences_per_step(self) -> int:
        """Packed sequences (micro-batches of one sequence) per optimizer step."""
        return self.tokens_per_step // self.seq_len

    @property
    def num_tokens(self) -> int:
        """Tokens actually trained on in the stage."""
        return self.num_steps * self.tokens_per_step


class OptimizerSpec(Strict):
    """AdamW, as ProLong: no weight decay on norms and biases."""

    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW beta1, beta2")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    weight_decay: float = Field(0.1, ge=0, description="decoupled weight decay (not on norms/biases)")
    grad_clip: float = Field(1.0, gt=0, description="max global gradient norm")


class TrainingSpec(Strict):
    """How the loop runs: checkpoints, logging, guards, loss chunking."""

    checkpoint_every: int = Field(500, gt=0, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1, description="how many recent checkpoints to keep")
    async_checkpoint: Literal["auto", "on", "off"] = Field(
        "auto",
        description="write checkpoints in a background thread after a copy to host memory, so the loop "
        "trains on; auto: on with GPUs, off on CPU",
    )
    resume: Literal["auto", "always", "never"] = Field(
        "auto",
        description="continue a stage from its newest checkpoint that verifies: always; never (refuse when "
        "it has checkpoints); auto = always when torchrun restarts the workers (TORCHELASTIC_RESTART_COUNT "
        "> 0), else never. --resume / --no-resume override it",
    )
    collective_timeout_s: float = Field(
        600.0,
        gt=0,
        description="seconds a collective or the process-group start-up waits for the other ranks before "
        "the run stops, naming the rank, the step and the collective",
    )
    flight_recorder: bool = Field(
        True,
        description="on GPUs: NCCL's flight recorder keeps each rank's last 2000 collectives and dumps "
        "them to OUTPUT_DIR/flight_recorder/rank_N when a collective times out",
    )
    log_every: int = Field(1, gt=0, description="steps between metric lines")
    loss_chunk_tokens: int = Field(2048, gt=0, description="cross-entropy block size (never full logits)")
    microbatch_tokens: TokenCount | None = Field(
        None,
        description="join consecutive packed sequences of a step into micro-batches of up to this many tokens "
        "(document attention only; each keeps its documents and positions, so the sums are the same), for "
        "faster short-sequence steps on CPU; none: one sequence per micro-batch",
    )
    max_bad_steps: int = Field(3, ge=1, description="non-finite steps in a row that stop the run")
    reorder_microbatches: bool = Field(True, description="ProLong's minibatch reordering by attention cost")
    offload_activations: bool = Field(
        False,
        description="hold each checkpointed decoder-layer input in (pinned) host memory from its forward to "
        "its backward, copied on a side stream with prefetch (needs activation_checkpointing); a stage's "
        "offload_activations overrides it",
    )
    tiled_mlp: Literal["auto"] | bool = Field(
        "auto",
        description="run each decoder MLP over sequence tiles, forward and backward (same math to rounding, "
        "not bitwise); auto: on from 32K tokens per rank (seq_len / sequence_parallel), off below; a "
        "stage's tiled_mlp overrides it",
    )
    mlp_tile_tokens: TokenCount | None = Field(
        None, description="tokens per MLP tile; none: about the hidden size, chosen per micro-batch"
    )
    tiled_norms: Literal["auto"] | bool = Field(
        "auto",
        description="run the RMSNorms of the residual stream (each decoder layer's, the final one) over "
        "sequence tiles of 8K tokens, recomputed in backward: no float32 [T, hidden] copies kept (same "
        "output bit for bit, weight gradients to rounding); auto: on from 32K tokens per rank; a stage's "
        "tiled_norms overrides it",
    )
    offload_parameters: bool = Field(
        False,
        description="keep the sharded float32 parameters, gradients and AdamW state in (pinned) host memory "
        "and run the optimizer step on the CPU (FSDP2 CPUOffloadPolicy); layers are copied to the GPU for "
        "their all-gather. For a model whose state does not fit the GPUs (8B on one GPU); a stage's "
        "offload_parameters overrides it",
    )
    attention_backend: Literal["auto", "varlen", "flash_attn", "sdpa_per_doc"] = Field(
        "auto",
        description="document-attention kernel; auto picks the fastest available that computes the "
        "model's attention exactly (docs/families.md)",
    )
    loss_kernel: Literal["auto", "chunked", "liger"] = Field(
        "auto",
        description="cross-entropy kernel: chunked (blocks of loss_chunk_tokens, any device) or liger "
        "(liger-kernel's fused linear cross-entropy, CUDA); auto: liger when installed on CUDA, else "
        "chunked. The saved recipe.yaml of a stage records the resolved choice",
    )
    cpu_compute_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "float32",
        description="dtype of the matrix products of CPU training: float32, bfloat16 (autocast; emulated and "
        "slower than float32 on CPUs without native bf16), or auto: bfloat16 where the CPU has native bf16 "
        "(AVX512-BF16 or AMX), else float32; printed and recorded resolved. GPUs compute in model.dtype",
    )


class EvalSpec(Strict):
    """Long-context evaluation (HELMET/RULER protocol): read by `prolong eval` (whose flags override
    single fields), the training hook (eval.every_n_steps) and the demo."""

    tasks: list[str] = Field(
        ["recall"],
        description="task names, aliases or categories (recall, ruler, synthetic, rag, rerank, icl, qa, summ)",
    )
    lengths: list[TokenCount] = Field(
        [8 * K, 16 * K, 32 * K, 64 * K, 128 * K],
        description="prompt lengths in tokens, sorted, repeats dropped (prompt + answer never exceed them)",
    )
    num_examples: int = Field(100, gt=0, description="examples per task and length")
    seed: int = Field(42, description="seed of example generation; in a recipe: the recipe's seed unless set")
    data_dir: str | None = Field(
        None,
        description="HELMET data files (rag, rerank, icl, qa, summ); for --short: DATA_DIR/<task>/<split>.jsonl",
    )
    essay_path: str | None = Field(None, description="prose file for RULER's essay haystack")
    depths: list[Annotated[float, Field(ge=0, le=1)]] | None = Field(
        None,
        description="needle depths (0..1) cycled over examples, for depth x length heatmaps; none: spread evenly",
    )
    chat: bool | None = Field(
        None,
        description="chat template (true) or base prompting with the answer prefix (false) for the tasks "
        "HELMET prompts through a chat template (QA and summarization: narrativeqa, infbench_qa/choice/sum, "
        "multi_lexsum); recall, RAG, re-rank, ICL and RULER are base-prompted either way, as in HELMET; "
        "none: chat when the tokenizer has a chat template",
    )
    engine: Literal["auto", "hf", "vllm"] = Field(
        "auto",
        description="generation engine: hf (chunked prefill, any device) or vllm (GPU); auto: vllm when "
        "installed and a GPU is present, else hf. The saved eval_spec.yaml records the resolved choice",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype the model is loaded in for generation; auto: the checkpoint's"
    )
    prefill_chunk: int = Field(2048, gt=0, description="prompt tokens per forward of the hf engine's prefill")
    judge_url: str | None = Field(
        None,
        description="OpenAI-compatible endpoint (http://host:port/v1) judging QA and summaries; none: ROUGE-L",
    )
    judge_model: str = Field("default", description="model name sent to the judge endpoint")
    judge_api_key_env: str | None = Field(
        None, description="environment variable holding the judge endpoint's API key (none: no key sent)"
    )
    short_tasks: list[str] = Field(
        ["hellaswag", "mmlu", "arc_challenge", "winogrande", "gsm8k"],
        description="lm-eval tasks of `prolong eval --short` (short-context checks before SFT)",
    )
    short_limit: int | None = Field(None, gt=0, description="examples per short task; none: all")
    short_tasks_dir: str | None = Field(None, description="directory of your own lm-eval task YAMLs for --short")
    every_n_steps: int | None = Field(
        None,
        gt=0,
        description="during pretraining stages, run the suite every N steps (one-process runs; at most 10 "
        "examples per task; base prompting unless chat is set; hf engine on the training model)",
    )

    @field_validator("lengths")
    @classmethod
    def _sorted_lengths(cls, lengths: list[int]) -> list[int]:
        if not lengths:
            raise ValueError("give at least one length")
        return sorted(set(lengths))

    @field_validator("tasks", "short_tasks")
    @classmethod
    def _some_tasks(cls, tasks: list[str]) -> list[str]:
        if not [t for t in tasks if t.strip()]:
            raise ValueError("give at least one task")
        return tasks


class SynthSpec(Strict):
    """Synthetic long instruction data (ProLong section C.4): QA, RAG and summarization examples
    generated by an instruct model from the long documents of some domains. The output JSONL is read
    by an sft domain, so its share of SFT tokens is set in the SFT stage's mixture."""

    source_domains: list[str] = Field(min_length=1, description="long domains whose documents are used")
    output: str = Field(description="JSONL of chat conversations (messages) to write")
    generator: str | None = Field(None, description="local HF instruct checkpoint directory")
    endpoint: str | None = Field(
        None, description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1"
    )
    endpoint_model: str | None = Field(None, description="model name sent to the endpoint")
    api_key_env: str | None = Field(
        None, description="environment variable holding the endpoint's API key (none: no key sent)"
    )
    num_examples: int = Field(1000, gt=0, description="examples to generate in all")
    task_shares: dict[Literal["qa", "rag", "summ"], float] = Field(
        {"qa": 0.4, "rag": 0.3, "summ": 0.3}, description="share of examples per task (paper: 40/30/30)"
    )
    seed: int | None = Field(
        None, description="seed of chunk, template and passage sampling; default: recipe seed"
    )
    max_doc_tokens: TokenCount = Field(32 * K, description="documents are cut to this many tokens")
    min_doc_tokens: TokenCount = Field(8 * K, description="shorter documents are not used")
    max_source_documents: int = Field(
        1000, gt=0, description="documents read from the source domains (the pool examples draw from)"
    )
    chunk_tokens: TokenCount = Field(
        1024, description="chunk length for QA snippets, RAG passages and summaries"
    )
    rag_passages: int | None = Field(
        None, gt=0, description="passages in a RAG context, gold included (default: every chunk)"
    )
    max_new_tokens: int = Field(512, gt=0, description="generation budget per model call")
    max_retries: int = Field(5, ge=0, description="endpoint retries (exponential backoff) before giving up")
    request_timeout_s: float = Field(600.0, gt=0, description="endpoint timeout per request, seconds")

    @model_validator(mode="after")
    def _one_generator(self) -> SynthSpec:
        if (self.generator is None) == (self.endpoint is None):
            raise ValueError("give exactly one of 'generator' (a local model) or 'endpoint' (an API)")
        if self.endpoint is not None and not self.endpoint_model:
            raise ValueError("'endpoint' needs 'endpoint_model' (the model name the server serves)")
        if self.endpoint is None and (self.endpoint_model is not None or self.api_key_env is not None):
            raise ValueError("'endpoint_model' and 'api_key_env' apply only with 'endpoint'")
        negative = {task: share for task, share in self.task_shares.items() if share < 0}
        if negative:
            raise ValueError(f"task_shares must not be negative: {negative}")
        total = math.fsum(self.task_shares.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"task_shares must sum to 1, they sum to {total:.6f}")
        if not self.chunk_tokens <= self.min_doc_tokens <= self.max_doc_tokens:
            raise ValueError(
                f"need chunk_tokens ({self.chunk_tokens}) <= min_doc_tokens ({self.min_doc_tokens}) "
                f"<= max_doc_tokens ({self.max_doc_tokens})"
            )
        return self


class Recipe(Strict):
    """A whole run: model, data, stages, optimizer, evaluation."""

    name: str = Field(description="recipe name")
    description: str = Field("", description="what this recipe is for")
    seed: int = Field(42, description="seed for data order, initialisation and sampling")
    output_dir: str = Field(description="run directory: checkpoints, exports, metrics, plots")
    model: ModelSpec
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    data: DataSpec
    stages: list[StageSpec] = Field(min_length=1, description="stages in order (SFT last)")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    synth: SynthSpec | None = Field(None, description="synthetic long instruction data for SFT")

    @model_validator(mode="before")
    @classmethod
    def _eval_seed_from_recipe(cls, data: Any) -> Any:
        """eval.seed defaults to the recipe's seed (the saved recipe then states it)."""
        if isinstance(data, dict) and isinstance(data.get("eval", {}), dict):
            evaluation = dict(data.get("eval") or {})
            evaluation.setdefault("seed", data.get("seed", cls.model_fields["seed"].default))
            data = {**data, "eval": evaluation}
        return data

    @model_validator(mode="after")
    def _references(self) -> Recipe:
        domains = {d.name: d for d in self.data.domains}
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        for i, stage in enumerate(self.stages):
            for j, entry in enumerate(stage.mixture):
                if entry.domain not in domains:
                    raise ValueError(
                        f"stages.{i}.mixture.{j}.domain: unknown domain {entry.domain!r}; "
                        f"defined domains: {sorted(domains)}"
                    )
                kind = domains[entry.domain].kind
                if (kind == "sft") != (stage.kind == "sft"):
                    raise ValueError(
                        f"stages.{i}.mixture.{j}: domain {entry.domain!r} of kind {kind!r} "
                        f"cannot be used in a {stage.kind!r} stage"
                    )
                if entry.doc_len is not None and kind != "long":
                    raise ValueError(f"stages.{i}.mixture.{j}: doc_len applies to long domains only")
            if stage.init_from in names and names.index(stage.init_from) >= i:
                raise ValueError(
                    f"stages.{i}.init_from: stage {stage.init_from!r} does not come before "
                    f"{stage.name!r}; a stage starts from an earlier one"
                )
            starts_from_model = stage.init_from == "model" or (i == 0 and stage.init_from == "previous")
            if stage.carry_optimizer_state and starts_from_model:
                raise ValueError(
                    f"stages.{i}.carry_optimizer_state: stage {stage.name!r} starts from the recipe's model, "
                    "which has no optimizer state; set init_from to an earlier stage or a finished stage directory"
                )
            if self.model.init is not None:  # a checkpoint's heads are checked once its config is read
                try:
                    validate_sequence_parallel(
                        stage.sequence_parallel, num_attention_heads=self.model.init.num_attention_heads
                    )
                except UserError as error:
                    raise ValueError(f"stages.{i}.sequence_parallel: {error}") from None
        if self.synth is not None:
            for name in self.synth.source_domains:
                if name not in domains:
                    raise ValueError(f"synth.source_domains: unknown domain {name!r}; defined: {sorted(domains)}")
                if domains[name].is_mds:
                    raise ValueError(f"synth.source_domains: {name!r} holds token ids (mds); synthesis needs text")
        mds = [d.name for d in self.data.domains if d.is_mds]
        if mds and (self.tokenizer.path is None or self.tokenizer.train_vocab_size is not None):
            raise ValueError(
                f"domains {mds} read MDS token ids, which carry no tokenizer: set tokenizer.path to the "
                "tokenizer they were made with (ProLong's released data: Llama-3's, e.g. the model directory)"
            )
        if self.model.init is not None and self.tokenizer.path is None and self.tokenizer.train_vocab_size is None:
            raise ValueError("a tiny model needs a tokenizer: set tokenizer.path or tokenizer.train_vocab_size")
        return self

    def stage(self, name: str | None) -> StageSpec:
        """The stage called `name` (the first when None); the error lists the stage names."""
        if name is None:
            return self.stages[0]
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise RecipeError(f"no stage {name!r} in recipe {self.name!r}; stages: {[s.name for s in self.stages]}")

    def base_stage(self) -> StageSpec:
        """The base model as evaluated, in a recipe that builds its own (the demo's): the last of the
        leading stages at the first stage's length or shorter (a short SFT after the base belongs to it),
        before the first stage that trains longer sequences."""
        base = self.stages[0]
        for stage in self.stages[1:]:
            if stage.seq_len > self.stages[0].seq_len:
                break
            base = stage
        return base

    def init_stage(self, stage: StageSpec) -> StageSpec | None:
        """The stage of this recipe `stage` starts from (None: the recipe's model or a directory)."""
        index = self.stages.index(stage)
        if stage.init_from == "previous":
            return self.stages[index - 1] if index else None
        return next((s for s in self.stages[:index] if s.name == stage.init_from), None)

    def select_stages(self, names: str | None) -> list[StageSpec]:
        """The stages named in a comma list ("extend-1m,sft-1m"), in recipe order; all when None."""
        if names is None:
            return list(self.stages)
        wanted = {self.stage(n.strip()).name for n in names.split(",") if n.strip()}
        return [s for s in self.stages if s.name in wanted]

    def domain(self, name: str) -> DomainSpec:
        """The data domain called `name`."""
        return next(d for d in self.data.domains if d.name == name)


# ---------------------------------------------------------------------------------------- loading
class RecipeError(ValueError):
    """A recipe that cannot be used; the message says where and why."""


RECIPES_DIR = Path(__file__).parent / "recipes"
# shipped recipes that became stages of one multi-stage recipe: (recipe, stage)
FORMER_RECIPES = {
    "prolong-8b-64k": ("prolong-8b", "stage1-64k"),
    "prolong-8b-512k": ("prolong-8b", "stage2-512k"),
    "prolong-8b-sft": ("prolong-8b", "sft"),
    **{f"ultralong-8b-{n}": ("ultralong-8b", f"extend-{n}") for n in ("1m", "2m", "4m")},
}


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """A file path, or the name of a shipped recipe (e.g. 'prolong-8b')."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = RECIPES_DIR / f"{name_or_path}.yaml"
    if shipped.exists():
        return shipped
    if str(name_or_path) in FORMER_RECIPES:
        recipe, stage = FORMER_RECIPES[str(name_or_path)]
        raise RecipeError(
            f"{name_or_path} is now the stage {stage!r} of the shipped recipe {recipe!r}: pass {recipe} "
            f"--stage {stage} (prolong train, plan, recipe show and data build all take --stage)"
        )
    available = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    raise RecipeError(f"{name_or_path}: no such file, and not a shipped recipe; shipped: {available}")


def _format_errors(source: str, error: ValidationError, what: str = "the recipe") -> str:
    lines = [f"{source}: {error.error_count()} problem(s) in {what}"]
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; allowed keys are in `prolong recipe show --schema`)"
        else:
            message = item["msg"].removeprefix("Value error, ")
        value = item.get("input")
        shown = "" if item["type"] == "missing" or isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {where}: {message}{shown}")
    return "\n".join(lines)


def _substitute_output_dir(value: Any, output_dir: str) -> Any:
    """Replace "{output_dir}" in every string, so data paths can live inside the run directory."""
    if isinstance(value, str):
        return value.replace("{output_dir}", output_dir)
    if isinstance(value, list):
        return [_substitute_output_dir(v, output_dir) for v in value]
    if isinstance(value, dict):
        return {k: _substitute_output_dir(v, output_dir) for k, v in value.items()}
    return value


def recipe_from_dict(data: Any, source: str = "<recipe>", output_dir: str | None = None) -> Recipe:
    """Validate a parsed recipe; errors name the key path and what is allowed.

    `output_dir` overrides the recipe's; strings containing "{output_dir}" are resolved against it.
    """
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a YAML mapping, got {type(data).__name__}")
    if output_dir is not None:
        data = {**data, "output_dir": output_dir}
    if isinstance(data.get("output_dir"), str):
        data = _substitute_output_dir(data, data["output_dir"])
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        raise RecipeError(_format_errors(source, error)) from None


SectionT = TypeVar("SectionT", bound=Strict)


def with_overrides(section: SectionT, changes: dict[str, Any], source: str) -> SectionT:
    """A copy of a recipe section with some fields replaced and validated again (command-line flags
    over a recipe block); errors name the field, as for a recipe file."""
    try:
        return type(section).model_validate({**section.model_dump(), **changes})
    except ValidationError as error:
        raise RecipeError(_format_errors(source, error, "these settings")) from None


def load_recipe(name_or_path: str | Path, output_dir: str | None = None) -> Recipe:
    """Load and validate a recipe file or shipped recipe name (optionally in another run directory)."""
    path = resolve_recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML: {error}") from None
    return recipe_from_dict(data, str(path), output_dir)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the resolved recipe (beside checkpoints and run directories)."""
    Path(path).write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), encoding="utf-8")


# ------------------------------------------------------------------------------------ derived numbers
def derived_numbers(
    recipe: Recipe, world_size: int, stages: list[StageSpec] | None = None
) -> list[dict[str, Any]]:
    """Per stage (all, or `stages`): steps, sequences per step, data-parallel size, gradient
    accumulation, tokens.

    A micro-batch is one packed sequence per data-parallel rank; sequence-parallel ranks share it.
    """
    rows = []
    for stage in recipe.stages if stages is None else stages:
        try:
            validate_sequence_parallel(stage.sequence_parallel, world_size)
        except UserError as error:
            raise RecipeError(f"stage {stage.name!r}: {error}") from None
        dp = world_size // stage.sequence_parallel
        per_step = stage.sequences_per_step
        if per_step % dp:
            raise RecipeError(
                f"stage {stage.name!r}: {per_step} sequences per step cannot be split evenly over "
                f"{dp} data-parallel ranks (world size {world_size} / sequence_parallel "
                f"{stage.sequence_parallel}); change tokens_per_step or the world size"
            )
        rows.append(
            {
                "stage": stage.name,
                "kind": stage.kind,
                "seq_len": stage.seq_len,
                "steps": stage.num_steps,
                "tokens_per_step": stage.tokens_per_step,
                "sequences_per_step": per_step,
                "data_parallel": dp,
                "sequence_parallel": stage.sequence_parallel,
                "grad_accumulation": per_step // dp,
                "warmup_steps": warmup_steps(stage, stage.num_steps),
                "tokens": stage.num_tokens,
            }
        )
    return rows


def warmup_steps(stage: StageSpec, num_steps: int) -> int:
    """Linear-warmup steps of a stage run for `num_steps` (its own, or fewer with --max-steps): the
    stage's warmup_ratio of them, at least one when the ratio is positive."""
    return max(1, round(stage.warmup_ratio * num_steps)) if stage.warmup_ratio > 0 else 0
