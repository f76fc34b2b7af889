"""Setting up and handing over stages: where a stage's model comes from, its data, its optimizer,
resuming, and the Hugging Face export at its end.

Layout of a run (output_dir from the recipe):

    <output_dir>/init/                 the randomly initialised model of a tiny recipe
    <output_dir>/<stage>/recipe.yaml   the resolved recipe
    <output_dir>/<stage>/checkpoints/step_NNNNNNNN/   distributed checkpoints (last N kept)
    <output_dir>/<stage>/export/       HF safetensors + tokenizer, with the stage's rope config;
                                       present = the stage is finished
    <output_dir>/<stage>/metrics.jsonl, tensorboard/, plots/{loss,throughput}.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)
from torch.distributed.fsdp import FSDPModule
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from prolong.config import Recipe, StageSpec, derived_numbers, save_recipe, warmup_steps
from prolong.data.build import resolve_tokenizer
from prolong.data.mixture import StageMixture
from prolong.errors import UserError
from prolong.layout import validate_sequence_parallel
from prolong.model.attention import (
    DocumentKernel,
    check_attention_support,
    document_attention,
    register_attention,
)
from prolong.model.io import init_model, load_model, load_tokenizer, parse_dtype, save_model
from prolong.model.loss import (
    CausalLMWithChunkedLoss,
    cpu_description,
    resolve_cpu_compute_dtype,
    resolve_loss_kernel,
)
from prolong.model.rope import apply_rope_config, set_model_rope
from prolong.parallel.mesh import ParallelMesh
from prolong.parallel.parallelize import (
    ActivationPolicy,
    hf_model_of,
    materialize,
    parallelize,
    stage_activation_policy,
)
from prolong.train.checkpoint import checkpoint_dirs, load_optimizer_state, resumable_checkpoint
from prolong.train.loop import StageRun
from prolong.train.metrics import plot_stage
from prolong.train.resume import initial_trainer_state, resume_stage
from prolong.train.schedule import build_optimizer


def stage_dir(recipe: Recipe, stage: StageSpec) -> Path:
    return Path(recipe.output_dir) / stage.name


def export_dir(recipe: Recipe, stage: StageSpec) -> Path:
    return stage_dir(recipe, stage) / "export"


def is_finished(recipe: Recipe, stage: StageSpec) -> bool:
    """A stage is finished once its export exists (save_model renames it into place when complete)."""
    return (export_dir(recipe, stage) / "config.json").is_file()


def _source_stage_dir(recipe: Recipe, index: int) -> Path | None:
    """The directory of the stage this one starts from (None: the recipe's model)."""
    stage = recipe.stages[index]
    names = [s.name for s in recipe.stages]
    if stage.init_from == "model" or (stage.init_from == "previous" and index == 0):
        return None
    if stage.init_from == "previous":
        return stage_dir(recipe, recipe.stages[index - 1])
    if stage.init_from in names:
        return stage_dir(recipe, recipe.stage(stage.init_from))
    return Path(stage.init_from)


def model_source(recipe: Recipe, index: int) -> Path:
    """The HF directory the stage's weights load from: the previous stage's export, or the model."""
    source = _source_stage_dir(recipe, index)
    if source is None:
        return Path(recipe.model.path) if recipe.model.path else Path(recipe.output_dir) / "init"
    model_dir = source / "export" if (source / "export").is_dir() else source
    if not (model_dir / "config.json").is_file():
        raise UserError(
            f"stage {recipe.stages[index].name!r} starts from {source}, which has no exported model yet; "
            "train the earlier stage first (prolong train RECIPE runs all stages in order)"
        )
    return model_dir


def model_heads(recipe: Recipe) -> tuple[int, int]:
    """(query heads, key/value heads) of the recipe's model, read without loading weights."""
    if recipe.model.init is not None:
        return recipe.model.init.num_attention_heads, recipe.model.init.num_key_value_heads
    assert recipe.model.path is not None  # ModelSpec holds a path or an init
    config = AutoConfig.from_pretrained(
        recipe.model.path, trust_remote_code=recipe.model.trust_remote_code, local_files_only=True
    )
    return config.num_attention_heads, getattr(config, "num_key_value_heads", config.num_attention_heads)


def validate_run(recipe: Recipe, stages: list[StageSpec], world_size: int) -> None:
    """Everything that can be refused before any model or data is touched (SP degree, batch split)."""
    derived_numbers(recipe, world_size, stages)  # SP divides the world, sequences split over DP ranks
    heads, kv_heads = model_heads(recipe)
    for stage in stages:
        try:
            validate_sequence_parallel(stage.sequence_parallel, world_size, heads, kv_heads)
        except UserError as error:
            raise UserError(f"stage {stage.name!r}: {error}") from None
        stage_activation_policy(recipe.training, stage, recipe.stages.index(stage))  # offload needs AC


def ensure_init_model(recipe: Recipe, mesh: ParallelMesh) -> None:
    """Write the tiny recipe's random model once (rank 0), seeded by the recipe, sized by its tokenizer."""
    spec, out = recipe.model.init, Path(recipe.output_dir) / "init"
    if spec is not None and mesh.is_main and not (out / "config.json").is_file():
        init_model(spec, out, seed=recipe.seed, tokenizer_dir=resolve_tokenizer(recipe, train_missing=False))
    mesh.barrier()


def stage_rope_args(config: PretrainedConfig, stage: StageSpec) -> dict[str, Any]:
    """The rope settings of a stage (keyword arguments of load_model): a new theta or YaRN, and the
    stage length as max_position_embeddings when it is longer than the model's."""
    rope = stage.rope
    return {
        "rope_theta": rope.theta if rope else None,
        "yarn": rope.yarn.model_dump() if rope and rope.yarn else None,
        "max_position_embeddings": None
        if rope and rope.yarn
        else max(config.max_position_embeddings, stage.seq_len),
    }


def meta_model(
    config: PretrainedConfig, stage: StageSpec, attn_implementation: str, trust_remote_code: bool = False
) -> PreTrainedModel:
    """The stage's model without weights (meta device, float32 master weights): `config` with the stage's
    rope settings. Ranks other than 0 build this and receive their shards; `prolong plan` builds it too."""
    rope_args = stage_rope_args(config, stage)
    apply_rope_config(
        config,
        theta=rope_args["rope_theta"],
        yarn=rope_args["yarn"],
        max_position_embeddings=rope_args["max_position_embeddings"],
    )
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(
            config,
            dtype=torch.float32,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
        )


def compute_dtype(recipe: Recipe, device_type: str) -> torch.dtype | None:
    """The dtype FSDP2 computes in: the recipe's on CUDA; None (the float32 master weights) on CPU."""
    return parse_dtype(recipe.model.dtype) if device_type == "cuda" else None


def wrap_model(recipe: Recipe, stage: StageSpec, model: PreTrainedModel) -> CausalLMWithChunkedLoss:
    """Refuse a model whose attention prolong cannot compute exactly, then wrap it in the chunked loss."""
    check_attention_support(model, documents=stage.attention == "document")  # exact or refused, now
    cpu_bf16 = resolve_cpu_compute_dtype(recipe.training.cpu_compute_dtype) == "bfloat16"
    return CausalLMWithChunkedLoss(
        model, chunk_tokens=recipe.training.loss_chunk_tokens, kernel=recipe.training.loss_kernel,
        cpu_autocast=torch.bfloat16 if cpu_bf16 else None,
    )


def parallelize_stage(
    recipe: Recipe,
    stage: StageSpec,
    wrapped: CausalLMWithChunkedLoss,
    mesh: ParallelMesh,
    backend: str,
    param_dtype: torch.dtype | None,
    document_kernel: DocumentKernel = document_attention,
) -> ActivationPolicy:
    """`parallelize` with the stage's activation policy (returned, auto settings resolved)."""
    policy = stage_activation_policy(recipe.training, stage, recipe.stages.index(stage))
    parallelize(
        wrapped, mesh, backend, param_dtype=param_dtype, document_kernel=document_kernel, **policy.kwargs()
    )
    return policy


def build_model(
    recipe: Recipe, stage: StageSpec, source: Path, mesh: ParallelMesh
) -> CausalLMWithChunkedLoss:
    """Load the stage's starting weights with its rope config, wrap the chunked loss, parallelize.

    Only rank 0 reads the checkpoint; the other ranks build the same modules on the meta device (no
    memory) and receive their shards from rank 0 once sharded, so a node holds one full copy of the
    weights in host memory rather than one per GPU.
    """
    backend = recipe.training.attention_backend
    attn_implementation = register_attention(backend)
    trust = recipe.model.trust_remote_code
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust, local_files_only=True)
    if mesh.is_main:
        # float32 master weights; GPU compute runs in the recipe dtype through FSDP2's mixed precision
        model = load_model(
            source,
            dtype=torch.float32,
            attn_implementation=attn_implementation,
            trust_remote_code=trust,
            **stage_rope_args(config, stage),
        )
    else:
        model = meta_model(config, stage, attn_implementation, trust)
    wrapped = wrap_model(recipe, stage, model)
    full_weights = wrapped.state_dict() if mesh.is_main else {}
    policy = parallelize_stage(recipe, stage, wrapped, mesh, backend, compute_dtype(recipe, mesh.device.type))
    if mesh.is_main:
        print(f"stage {stage.name}: {policy.describe()}", flush=True)  # tiled_mlp: auto resolved
    if mesh.world_size > 1:
        if not mesh.is_main:
            materialize(wrapped, mesh.device, policy.offload_parameters)  # offloaded shards: host memory
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(wrapped, full_weights, options=options)
        if not mesh.is_main:
            set_model_rope(model)  # rotary buffers are not in state dicts: recompute them from the config
    return wrapped


def resolve_installed_choices(recipe: Recipe, mesh: ParallelMesh) -> Recipe:
    """The recipe with `auto` settings that depend on what is installed (the loss kernel) resolved for
    this run's device; the choice is printed here and recorded in the stage's recipe.yaml."""
    choice = recipe.training.loss_kernel
    kernel = resolve_loss_kernel(choice, mesh.device)
    if mesh.is_main:
        print(f"loss kernel: {kernel} (training.loss_kernel: {choice})", flush=True)
    cpu_choice = recipe.training.cpu_compute_dtype
    cpu_dtype = resolve_cpu_compute_dtype(cpu_choice)
    if mesh.is_main and (cpu_choice != "float32" or mesh.device.type == "cpu"):
        print(f"CPU compute dtype: {cpu_dtype} (training.cpu_compute_dtype: {cpu_choice}; this CPU: "
              f"{cpu_description()})", flush=True)
    training = recipe.training.model_copy(update={"loss_kernel": kernel, "cpu_compute_dtype": cpu_dtype})
    return recipe.model_copy(update={"training": training})


def prepare_stage(
    recipe: Recipe,
    index: int,
    mesh: ParallelMesh,
    resume: bool,
    max_steps: int | None,
    resume_from: str | None = None,
) -> tuple[StageRun, PreTrainedTokenizerBase]:
    """Build model, optimizer and data of stage `index`; restore a checkpoint or carried AdamW state."""
    recipe = resolve_installed_choices(recipe, mesh)
    stage = recipe.stages[index]
    out = stage_dir(recipe, stage)
    tokenizer = load_tokenizer(resolve_tokenizer(recipe, train_missing=False))
    if _source_stage_dir(recipe, index) is None:
        ensure_init_model(recipe, mesh)
    if checkpoint_dirs(out / "checkpoints") and not resume:
        raise UserError(
            f"stage {stage.name!r} already has checkpoints in {out / 'checkpoints'}; pass --resume to continue "
            "it, or delete the directory to start over"
        )
    data = StageMixture.open(recipe.data.shard_dir, stage, recipe.seed, tokenizer)
    model = build_model(recipe, stage, model_source(recipe, index), mesh)
    optimizer = build_optimizer(model, recipe.optimizer, stage.lr)
    num_steps = min(stage.num_steps, max_steps) if max_steps else stage.num_steps
    warmup = warmup_steps(stage, num_steps)
    run = StageRun(
        stage=stage,
        model=model,
        config=hf_model_of(model).config,
        optimizer=optimizer,
        data=data,
        mesh=mesh,
        optim_spec=recipe.optimizer,
        training=recipe.training,
        stage_dir=out,
        num_steps=num_steps,
        warmup_steps=warmup,
        trainer_state=initial_trainer_state(recipe, stage, num_steps, mesh),
    )
    run.eval_hook = _eval_hook(recipe, stage, run, tokenizer)
    # the newest checkpoint that verifies (or --resume-from); schedule and data shards checked
    resumed = resume and resume_stage(run, resume_from)
    if not resumed and stage.carry_optimizer_state:
        source = _source_stage_dir(recipe, index)
        carried = resumable_checkpoint(source / "checkpoints", mesh) if source else None
        if carried is None:
            raise UserError(
                f"stage {stage.name!r} carries the optimizer state, but {source} has no checkpoint"
            )
        load_optimizer_state(carried, model, optimizer)
    if mesh.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_recipe(recipe, out / "recipe.yaml")
    return run, tokenizer


def _eval_hook(recipe: Recipe, stage: StageSpec, run: StageRun, tokenizer: PreTrainedTokenizerBase):
    """A small long-context suite every `eval.every_n_steps` steps: the recipe's eval block, trimmed by
    make_eval_callback (at most 10 examples per task and length).

    Only in one-process runs: generation on a sharded model would need every rank in lockstep;
    evaluate the stage exports with `prolong eval` instead."""
    every = recipe.eval.every_n_steps
    if every is None or stage.kind == "sft":
        return None
    if run.mesh.world_size > 1:
        if run.mesh.is_main:
            print(f"note: eval.every_n_steps is skipped in a {run.mesh.world_size}-process run; "
                  "evaluate the stage export with `prolong eval` instead")
        return None
    from prolong.eval.runner import make_eval_callback

    callback = make_eval_callback(recipe.eval, run.stage_dir / "eval")
    if run.mesh.is_main:
        print(f"eval every {every} steps: hf engine on the training model (eval.engine applies to `prolong eval`)",
              flush=True)

    def hook(step: int) -> dict:
        if step % every:
            return {}
        # The HF model runs outside the FSDP root's forward: gather the root's own parameters
        # (embeddings, final norm, head) first; decoder layers gather theirs in their own hooks.
        root = cast(FSDPModule, run.model)  # parallelize made it one
        root.unshard()
        try:
            return callback(hf_model_of(run.model), tokenizer, step)
        finally:
            root.reshard()

    return hook


def export_stage(run: StageRun, recipe: Recipe, tokenizer: PreTrainedTokenizerBase) -> Path:
    """Gather the full weights and write the stage's HF safetensors export (rank 0); returns its path.

    The export is a plain transformers checkpoint with the stage's rope config: the next stage, SFT,
    evaluation and anyone else load it with from_pretrained.
    """
    full = get_model_state_dict(run.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    out = export_dir(recipe, run.stage)
    if run.mesh.is_main:
        prefix = "model."  # CausalLMWithChunkedLoss holds the HF model as .model
        weights = {k.removeprefix(prefix): v for k, v in full.items()}
        dtype = parse_dtype(recipe.model.dtype)
        plain = AutoModelForCausalLM.from_config(run.config, dtype=dtype)
        plain.load_state_dict(weights)
        save_model(plain, tokenizer, out)
        plot_stage(
            run.stage_dir / "metrics.jsonl", run.stage_dir / "plots", f"{recipe.name} / {run.stage.name}"
        )
    run.mesh.barrier()
    return out
