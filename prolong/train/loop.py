"""The training loop shared by continued pretraining and SFT (the difference is data: SFT sequences
carry a loss mask). Setup lives in `prolong.train.stages`; this file is the step and the loop.

The loss of a step is exact: every rank sums the cross-entropy of its valid tokens, and the sum is
divided by the number of valid tokens of the whole optimizer step (all data-parallel ranks, all
sequence-parallel slices, all accumulation micro-batches), counted before the first backward.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.distributed.tensor import DTensor
from transformers import PretrainedConfig

from prolong.config import OptimizerSpec, StageSpec, TrainingSpec
from prolong.data.format import PackedSequence
from prolong.data.mixture import StageMixture
from prolong.errors import UserError
from prolong.model.batch import AttentionMode, PackedBatch, concat_batches, make_packed_batch
from prolong.parallel.mesh import ParallelMesh
from prolong.parallel.ulysses import sp_shard_batch
from prolong.train.checkpoint import Checkpointer
from prolong.train.metrics import MetricsWriter, peak_flops, peak_memory_bytes, training_flops
from prolong.train.schedule import lr_at, set_lr


class TrainingStopped(UserError):
    """The run stopped on purpose (too many non-finite steps); a checkpoint was written first."""


class StepFailed(RuntimeError):
    """A step of a multi-process run failed: most often a collective that timed out or lost a peer."""


def use_async_checkpoint(training: TrainingSpec, device: torch.device) -> bool:
    """training.async_checkpoint resolved: auto is on with GPUs (a synchronous save stalls them all)."""
    return training.async_checkpoint == "on" or (training.async_checkpoint == "auto" and device.type == "cuda")


def step_failure(mesh: ParallelMesh, step: int, training: TrainingSpec, error: BaseException) -> str:
    """The message of a failed step: rank, step and the collective it was in, then the cause."""
    cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (
        f"rank {mesh.rank} of {mesh.world_size} failed in step {step + 1} during {mesh.last_collective} "
        f"(training.collective_timeout_s = {training.collective_timeout_s:g}): {cause}. When a rank dies or "
        "hangs, the others stop here; the log of the rank that stopped first says why."
    )


@dataclass
class StageRun:
    """Everything one stage's loop needs; built by `prolong.train.stages.prepare_stage`."""

    stage: StageSpec
    model: nn.Module  # parallelized; forward(PackedBatch) -> (loss_sum, num_valid)
    config: PretrainedConfig
    optimizer: torch.optim.Optimizer
    data: StageMixture
    mesh: ParallelMesh
    optim_spec: OptimizerSpec
    training: TrainingSpec
    stage_dir: Path
    num_steps: int
    warmup_steps: int
    start_step: int = 0
    trainer_state: dict = field(default_factory=dict)  # saved with every checkpoint
    eval_hook: Callable[[int], dict] | None = None  # step -> eval metrics ({} on steps it skips)

    @property
    def checkpoint_dir(self) -> Path:
        return self.stage_dir / "checkpoints"


@dataclass
class StepResult:
    loss: float  # mean over the step's valid tokens
    grad_norm: float
    num_valid_tokens: int
    num_tokens: int
    attention_cost: int  # sum of squared attention-segment lengths of the step
    skipped: bool


def sequence_to_batch(sequence: PackedSequence, attention: AttentionMode, sp: int) -> PackedBatch:
    """A packed batch of `sequence`, padded to a multiple of the SP degree with one extra ignored document."""
    input_ids, doc_lens, loss_mask = sequence.input_ids, sequence.doc_lens, sequence.loss_mask
    pad = -len(input_ids) % sp
    if pad:
        input_ids = np.concatenate([input_ids, np.zeros(pad, dtype=input_ids.dtype)])
        doc_lens = np.concatenate([doc_lens, [pad]])
        base = np.ones(len(sequence.input_ids), bool) if loss_mask is None else loss_mask.astype(bool)
        loss_mask = np.concatenate([base, np.zeros(pad, bool)])
    return make_packed_batch(input_ids.astype(np.int64), doc_lens, loss_mask, attention=attention)


def _global_grad_norm(model: nn.Module, max_norm: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if isinstance(norm, DTensor):  # FSDP2 gradients are sharded: the norm is reduced over all ranks
        norm = norm.full_tensor()
    return float(norm)


def accumulate_gradients(model: nn.Module, batches: list[PackedBatch], mesh: ParallelMesh) -> StepResult:
    """Forward and backward over this rank's micro-batches (whole sequences; SP slicing happens here).

    FSDP2 averages gradients over all ranks (reduce-scatter with mean), so each rank scales its loss
    sum by world_size / global_valid_tokens: the average over ranks of these is then exactly the sum
    of every rank's token losses divided by the global count, the gradient of the token-mean loss.
    """
    local_valid = sum(b.num_valid_tokens for b in batches)
    local_cost = sum(b.attention_cost for b in batches)
    local_tokens = sum(b.seq_len for b in batches)
    # counted over "dp" only: the ranks of one SP group hold the same sequences
    global_valid, global_cost, global_tokens = mesh.all_reduce_sum(
        [local_valid, local_cost, local_tokens], "dp"
    )
    scale = mesh.world_size / max(global_valid, 1.0)
    loss_sum = torch.zeros((), dtype=torch.float64, device=mesh.device)
    for batch in batches:
        local = sp_shard_batch(batch, mesh.sp_rank, mesh.sp_size).to(mesh.device)
        mesh.last_collective = "forward/backward (FSDP all-gathers and reduce-scatters, SP all-to-alls)"
        micro_loss_sum, _ = model(local)
        (micro_loss_sum * scale).backward()
        loss_sum += micro_loss_sum.detach().double()
    loss = mesh.all_reduce_sum([float(loss_sum)])[0] / max(global_valid, 1.0)
    return StepResult(loss, math.nan, int(global_valid), int(global_tokens), int(global_cost), skipped=False)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[PackedBatch],
    mesh: ParallelMesh,
    lr: float,
    grad_clip: float,
) -> StepResult:
    """One optimizer step: accumulate, clip, and update unless the loss or gradient is not finite.

    Every rank sees the same all-reduced loss and gradient norm, so all ranks skip together.
    """
    result = accumulate_gradients(model, batches, mesh)
    mesh.last_collective = "the gradient-norm all_reduce"
    result.grad_norm = _global_grad_norm(model, grad_clip)
    result.skipped = (
        not (math.isfinite(result.loss) and math.isfinite(result.grad_norm)) or result.num_valid_tokens == 0
    )
    if not result.skipped:
        set_lr(optimizer, lr)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return result


def step_batches(run: StageRun, step: int) -> list[PackedBatch]:
    """This rank's micro-batches of `step`, in ProLong's reordered processing order."""
    indices = run.data.indices_for_step(step, run.stage.sequences_per_step)
    mine = run.data.rank_share(indices, run.mesh.dp_rank, run.mesh.dp_size, run.training.reorder_microbatches)
    batches = [sequence_to_batch(run.data[i], run.stage.attention, run.mesh.sp_size) for i in mine]
    if run.training.microbatch_tokens is None or run.stage.attention != "document":
        return batches
    return group_microbatches(batches, run.training.microbatch_tokens)


def group_microbatches(batches: list[PackedBatch], max_tokens: int) -> list[PackedBatch]:
    """Consecutive packed sequences joined into rows of at most `max_tokens` (training.microbatch_tokens);
    a sequence longer than that stays a row of its own. Same loss and gradient sums (concat_batches)."""
    rows: list[list[PackedBatch]] = []
    for batch in batches:
        if rows and sum(b.seq_len for b in rows[-1]) + batch.seq_len <= max_tokens:
            rows[-1].append(batch)
        else:
            rows.append([batch])
    return [concat_batches(row) for row in rows]


class _HangWatch:
    """Names the rank, step and collective when a step waits longer than the collective timeout. gloo
    then raises (StepFailed names the same), but NCCL's watchdog ends the process without a Python
    traceback, so this line, printed first, is the one that says where each rank was."""

    def __init__(self, mesh: ParallelMesh, timeout_s: float) -> None:
        self.mesh, self.timeout_s = mesh, timeout_s
        self.step = 0
        self.started: float | None = None  # time.monotonic() when the running step began
        self.stopped = threading.Event()
        if mesh.world_size > 1:
            threading.Thread(target=self._watch, name="hang-watch", daemon=True).start()

    def begin(self, step: int) -> None:
        self.step, self.started = step, time.monotonic()

    def end(self) -> None:
        self.started = None

    def _watch(self) -> None:
        warned = None
        while not self.stopped.wait(min(10.0, self.timeout_s / 20)):
            started = self.started
            # at 90% of the timeout: before NCCL's watchdog ends the process
            if started is not None and started != warned and time.monotonic() - started > 0.9 * self.timeout_s:
                warned = started
                print(f"rank {self.mesh.rank} of {self.mesh.world_size}: step {self.step + 1} has run for "
                      f"{time.monotonic() - started:.0f} s, now in {self.mesh.last_collective}; collectives time "
                      f"out after {self.timeout_s:g} s (training.collective_timeout_s)", file=sys.stderr, flush=True)


class _Reporter:
    """Progress bar (on a terminal) or a line per logged step, plus metrics.jsonl; rank 0 only."""

    def __init__(self, run: StageRun) -> None:
        self.enabled = run.mesh.is_main
        self.writer = MetricsWriter(run.stage_dir, self.enabled)
        self.console = Console()
        self.peak = peak_flops(run.mesh.device)
        self.progress = None
        if self.enabled and self.console.is_terminal:
            self.progress = Progress(
                TextColumn(f"[bold]{run.stage.name}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.progress.add_task(
                "train", total=run.num_steps, completed=run.start_step, info=""
            )
            self.progress.start()

    def step(self, record: dict, log: bool) -> None:
        if not self.enabled:
            return
        info = (
            f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  {record['tokens_per_s']:,.0f} tok/s  "
            f"mem {record['peak_memory_gb']:.2f} GB"
        )
        if log:
            self.writer.write(record)
        if self.progress is not None:
            self.progress.update(self.task, completed=record["step"], info=info)
        elif log:
            self.console.print(
                f"step {record['step']}/{record['num_steps']}  {info}  eta {record['eta_s']:.0f}s"
            )

    def event(self, message: str, **fields: object) -> None:
        if self.enabled:
            self.writer.write({"event": message, **fields})
            self.console.print(message)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        self.writer.close()


def run_stage(run: StageRun) -> None:
    """Train `run.stage` from `run.start_step` to `run.num_steps`, checkpointing as the recipe says."""
    # from_pretrained returns eval mode, and transformers checkpoints decoder layers only in train mode
    run.model.train()
    reporter = _Reporter(run)
    mesh, training, stage = run.mesh, run.training, run.stage
    bad_in_a_row = int(run.trainer_state.get("bad_steps_in_a_row", 0))
    step_times: list[float] = []
    asynchronous = use_async_checkpoint(training, mesh.device)
    reporter.event(f"checkpoints: {'asynchronous' if asynchronous else 'synchronous'} "
                   f"(training.async_checkpoint: {training.async_checkpoint})")
    run.trainer_state.update(async_checkpoint=asynchronous)
    checkpointer = Checkpointer(run.checkpoint_dir, mesh, training.keep_checkpoints, asynchronous,
                                training.collective_timeout_s)

    def checkpoint(done: int) -> Path:
        return checkpointer.save(done, run.model, run.optimizer, run.trainer_state)

    watch = _HangWatch(mesh, training.collective_timeout_s)
    finished = False
    try:
        for step in range(run.start_step, run.num_steps):
            started = time.perf_counter()
            batches = step_batches(run, step)
            lr = lr_at(step, run.num_steps, run.warmup_steps, stage.lr, stage.min_lr)
            watch.begin(step)
            try:
                result = train_step(run.model, run.optimizer, batches, mesh, lr, run.optim_spec.grad_clip)
            except RuntimeError as error:
                if mesh.world_size == 1:
                    raise
                raise StepFailed(step_failure(mesh, step, training, error)) from error
            watch.end()
            if mesh.device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - started
            step_times.append(elapsed)
            bad_in_a_row = bad_in_a_row + 1 if result.skipped else 0
            run.trainer_state.update(bad_steps_in_a_row=bad_in_a_row)
            if result.skipped:
                reporter.event(
                    f"step {step + 1}: skipped (loss {result.loss}, grad norm {result.grad_norm}, "
                    f"{result.num_valid_tokens} valid tokens); {bad_in_a_row} bad step(s) in a row",
                    step=step + 1,
                )
            flops = training_flops(run.config, result.num_tokens, result.attention_cost)
            recent = step_times[-20:]
            record = {
                "step": step + 1,  # optimizer steps done, as in checkpoint names
                "num_steps": run.num_steps,
                "loss": result.loss,
                "lr": lr,
                "grad_norm": result.grad_norm,
                "skipped": result.skipped,
                "tokens": result.num_tokens,
                "valid_tokens": result.num_valid_tokens,
                "step_time_s": elapsed,
                "tokens_per_s": result.num_tokens / elapsed,
                "tokens_per_s_per_device": result.num_tokens / elapsed / mesh.world_size,
                "tflops_per_device": flops / elapsed / mesh.world_size / 1e12,
                "mfu": flops / elapsed / mesh.world_size / reporter.peak if reporter.peak else None,
                "peak_memory_gb": peak_memory_bytes(mesh.device) / 2**30,
                "eta_s": sum(recent) / len(recent) * (run.num_steps - step - 1),
            }
            done = step + 1
            reporter.step(
                record, log=done % training.log_every == 0 or done == run.num_steps or result.skipped
            )
            if bad_in_a_row >= training.max_bad_steps:
                path = checkpoint(done)
                checkpointer.wait()
                raise TrainingStopped(
                    f"stage {stage.name!r} stopped at step {done}: {bad_in_a_row} steps in a row had a non-finite "
                    f"loss or gradient (last loss {result.loss}, grad norm {result.grad_norm}). Checkpoint: {path}. "
                    "Lower the learning rate or check the data of these steps (metrics.jsonl), then --resume."
                )
            if run.eval_hook is not None and (scores := run.eval_hook(done)):
                reporter.event(f"step {done}: eval " + ", ".join(f"{k} {v:.1f}" for k, v in scores.items()),
                               step=done, **scores)
            if done % training.checkpoint_every == 0 or done == run.num_steps:
                checkpoint(done)
        checkpointer.close()  # the last checkpoint is published before the stage's export
        finished = True
    finally:
        watch.stopped.set()
        reporter.close()
        if not finished:  # a background save still in flight is left unpublished: the last one stands
            checkpointer.abandon()
