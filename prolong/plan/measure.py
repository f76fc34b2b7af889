"""A real optimizer step's peak memory on this machine, to check the planner against.

`measure_step` builds a stage exactly as the dry run does (same config, `meta_model`, `wrap_model`,
`parallelize_stage`, AdamW warm-up, `train_step`), but on real tensors in a real process group (run it
under torchrun), and measures what the step allocates with an accounting independent of the planner's:
torch's profiler records every allocation and free of the CPU allocator (profile_memory=True); the
peak is the bytes alive when the step starts (its parameters, gradients and optimizer state, summed
from the tensors themselves) plus the highest running total of the step's allocations. On CUDA it is
torch.cuda.max_memory_allocated over the step.

`VALIDATION_CASES` are the tiny configurations the planner is compared with (tests/plan and
benchmarks/bench_plan.py): lengths, sequence parallelism 1 and 2, with and without activation
checkpointing, tiled MLP, gradient accumulation.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.tensor import DTensor
from transformers import PretrainedConfig

from prolong.config import Recipe, StageSpec, recipe_from_dict
from prolong.model.attention import register_attention
from prolong.parallel.mesh import ParallelMesh
from prolong.plan.dry_run import initialise_optimizer_state, plan_batch
from prolong.train.loop import train_step
from prolong.train.schedule import build_optimizer
from prolong.train.stages import compute_dtype, meta_model, parallelize_stage, wrap_model


@dataclass(frozen=True)
class ValidationCase:
    """One tiny configuration at world size 2 (one torchrun launch measures them all): its name,
    length, SP degree (1: two data-parallel ranks) and activation policies."""

    name: str
    seq_len: int
    sequence_parallel: int
    activation_checkpointing: bool
    tiled_mlp: bool
    accumulate: bool = False  # two sequences per rank per step
    world_size: int = 2


VALIDATION_CASES: tuple[ValidationCase, ...] = (
    ValidationCase("1K, sp 1, AC", 1024, 1, True, False),
    ValidationCase("4K, sp 1, no AC", 4096, 1, False, False),
    ValidationCase("4K, sp 1, AC, tiled MLP, accumulation 2", 4096, 1, True, True, accumulate=True),
    ValidationCase("2K, sp 2, AC", 2048, 2, True, False),
    ValidationCase("4K, sp 2, no AC", 4096, 2, False, False),
)


def validation_recipe(case: ValidationCase) -> Recipe:
    """A recipe of one stage for `case`: a random 4-layer Llama (hidden 256, GQA 4/2, vocabulary 4096)."""
    per_step = (2 if case.accumulate else 1) * case.world_size // case.sequence_parallel
    return recipe_from_dict(
        {
            "name": "plan-validation",
            "output_dir": "runs/plan-validation",
            "model": {
                "init": {
                    "architecture": "llama",
                    "hidden_size": 256,
                    "intermediate_size": 688,
                    "num_hidden_layers": 4,
                    "num_attention_heads": 4,
                    "num_key_value_heads": 2,
                    "max_position_embeddings": case.seq_len,
                },
                "dtype": "float32",
            },
            "tokenizer": {"train_vocab_size": 4096},
            "data": {
                "domains": [{"name": "text", "kind": "long", "sources": [{"type": "jsonl", "path": "-"}]}]
            },
            "stages": [
                {
                    "name": "stage",
                    "seq_len": case.seq_len,
                    "tokens_per_step": case.seq_len * per_step,
                    "steps": 1,
                    "lr": 1e-4,
                    "min_lr": 1e-5,
                    "sequence_parallel": case.sequence_parallel,
                    "activation_checkpointing": case.activation_checkpointing,
                    "tiled_mlp": case.tiled_mlp,
                    "mixture": [{"domain": "text", "proportion": 1.0}],
                }
            ],
            "training": {"loss_kernel": "chunked", "mlp_tile_tokens": 1024},
        }
    )


def _persistent_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the distinct storages of parameters, buffers, gradients and optimizer state."""
    tensors: list[torch.Tensor] = [*model.parameters(), *model.buffers()]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [
        v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)
    ]
    storages: dict[int, int] = {}
    for tensor in tensors:
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        storage = local.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def _profiled_peak(run: Any) -> int:
    """The highest running total of bytes allocated minus freed while `run()` runs (CPU allocator)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def measure_step(recipe: Recipe, stage: StageSpec, config: PretrainedConfig, mesh: ParallelMesh) -> int:
    """Peak bytes of one real optimizer step of `stage` on this rank (weights zero: values do not matter)."""
    accumulation = stage.sequences_per_step // mesh.dp_size
    backend = recipe.training.attention_backend
    model = meta_model(config, stage, register_attention(backend), recipe.model.trust_remote_code)
    wrapped = wrap_model(recipe, stage, model)
    parallelize_stage(recipe, stage, wrapped, mesh, backend, compute_dtype(recipe, mesh.device.type))
    wrapped.to_empty(device=mesh.device)
    with torch.no_grad():
        for tensor in [*wrapped.parameters(), *wrapped.buffers()]:
            tensor.zero_()  # finite loss and gradients, so the optimizer step runs
    wrapped.train()
    optimizer = build_optimizer(wrapped, recipe.optimizer, stage.lr)
    initialise_optimizer_state(wrapped, optimizer, keep_gradients=accumulation > 1)
    batches = [plan_batch(stage, mesh.sp_size)]
    gc.collect()
    if mesh.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        train_step(wrapped, optimizer, batches, mesh, stage.lr, recipe.optimizer.grad_clip)
        return torch.cuda.max_memory_allocated()
    start = _persistent_bytes(wrapped, optimizer)
    return start + _profiled_peak(
        lambda: train_step(wrapped, optimizer, batches, mesh, stage.lr, recipe.optimizer.grad_clip)
    )
