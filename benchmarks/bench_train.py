"""Training-step benchmarks (CPU, baseline in the same run, reported as ratios).

    python benchmarks/bench_train.py [--quick] [--threads N] [--out benchmarks/results/train.md]

1. One optimizer step on 16K tokens of packed documents, same tiny Llama-shaped model and weights:
   prolong's step (document attention per document, chunked loss, FSDP2 wrapping, exact token-mean
   loss), with activation checkpointing (the GPU recipes' setting) and as the demo runs it (no
   checkpointing, the loss in one chunk), vs what a user would otherwise write with transformers: the
   Trainer's training step (model(**inputs).loss, backward, clip, AdamW) on a batch from
   DataCollatorWithFlattening with standard "sdpa" attention (transformers turns the restarting
   position ids into a dense [T, T] block-diagonal mask). Goals: >= 1.5x tokens/s with checkpointing,
   >= 3x as the demo runs it, <= 0.5x peak memory.
2. Peak memory per rank of one step at 32K tokens: sequence parallel 2 (torchrun, 2 gloo ranks) vs 1.

Speed is the CPU time of a step (all threads of the process): on a machine shared with other jobs wall
time measures the others as much as the step. Every variant runs in a fresh subprocess with --threads
torch threads (default 1), so peak RSS and CPU time are its own.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

K = 1024
MB = 1024**2
HERE = Path(__file__).parent
MODEL = {
    "vocab_size": 8192,
    "hidden_size": 128,
    "intermediate_size": 344,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64 * K,
}


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _doc_lens(total: int, n_docs: int, seed: int = 0) -> list[int]:
    """n_docs random positive lengths summing to total (seeded)."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(n_docs, generator=g) + 0.25
    lens = (weights / weights.sum() * total).floor().long().clamp(min=1)
    lens[-1] += total - int(lens.sum())
    return lens.tolist()


def _model(attn_implementation: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**MODEL, tie_word_embeddings=False)).float()
    model.set_attn_implementation(attn_implementation)
    return model


def _tokens(seq_len: int) -> torch.Tensor:
    return torch.randint(0, MODEL["vocab_size"], (seq_len,), generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------ variants
def demo_loss_chunk_tokens() -> int:
    """The loss chunk the demo trains with (tiny-demo.yaml's training.loss_chunk_tokens)."""
    from prolong.config import load_recipe

    return load_recipe("tiny-demo").training.loss_chunk_tokens


def run_prolong(seq_len: int, n_docs: int, steps: int, demo: bool = False, bf16: bool = False) -> dict:
    """prolong's train_step; under torchrun the ranks form one sequence-parallel group. demo: as the
    demo's recipe runs it (no activation checkpointing, the loss in tiny-demo's loss_chunk_tokens); bf16:
    under CPU bf16 autocast, as training.cpu_compute_dtype auto does on a CPU with native bf16."""
    import numpy as np

    from prolong.config import OptimizerSpec
    from prolong.data.format import PackedSequence
    from prolong.model.attention import register_attention
    from prolong.model.loss import CausalLMWithChunkedLoss
    from prolong.parallel import ParallelMesh, parallelize
    from prolong.train.loop import sequence_to_batch, train_step
    from prolong.train.schedule import build_optimizer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    mesh = ParallelMesh.create(sequence_parallel=world)
    chunk = demo_loss_chunk_tokens() if demo else 2048
    wrapped = CausalLMWithChunkedLoss(_model(register_attention("sdpa_per_doc")), chunk_tokens=chunk,
                                      cpu_autocast=torch.bfloat16 if bf16 else None)
    model = parallelize(wrapped, mesh, "sdpa_per_doc", activation_checkpointing=not demo)
    optimizer = build_optimizer(model, OptimizerSpec(), lr=1e-4)
    sequence = PackedSequence(
        _tokens(seq_len).numpy().astype(np.uint32), np.asarray(_doc_lens(seq_len, n_docs), np.int32)
    )
    batch = sequence_to_batch(sequence, "document", mesh.sp_size)
    before, times, cpu = _rss(), [], []
    for _ in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = train_step(model, optimizer, [batch], mesh, lr=1e-4, grad_clip=1.0)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    torch.distributed.destroy_process_group()
    return {"times": times, "cpu": cpu, "loss": result.loss, "rss_before": before, "peak_rss": _peak_rss()}


def run_baseline(seq_len: int, n_docs: int, steps: int) -> dict:
    """transformers Trainer's training step on a DataCollatorWithFlattening batch, sdpa attention."""
    from transformers import DataCollatorWithFlattening

    model = _model("sdpa")
    model.train()
    ids, lens = _tokens(seq_len).tolist(), _doc_lens(seq_len, n_docs)
    starts = [sum(lens[:i]) for i in range(len(lens))]
    features = [{"input_ids": ids[s : s + n]} for s, n in zip(starts, lens, strict=True)]
    inputs = DataCollatorWithFlattening(return_position_ids=True)(features, return_tensors="pt")
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-4,
        betas=(0.9, 0.95),
    )
    before, times, cpu = _rss(), [], []
    for _ in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        # Trainer.training_step + the optimizer part of its inner loop, without accelerate's wrapping
        output = model(**inputs, use_cache=False)
        output.loss.backward()
        loss = output.loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"times": times, "cpu": cpu, "loss": loss.item(), "rss_before": before, "peak_rss": _peak_rss()}


def _subprocess(variant: str, seq_len: int, n_docs: int, steps: int, threads: int, nproc: int = 1) -> list[dict]:
    """Run one variant in fresh processes; returns each rank's result."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            str(Path(__file__).resolve()),
            "--variant",
            variant,
            "--seq-len",
            str(seq_len),
            "--docs",
            str(n_docs),
            "--steps",
            str(steps),
            "--result",
            tmp,
        ]
        if nproc > 1:
            command = [
                str(Path(sys.executable).with_name("torchrun")),
                "--standalone",
                f"--nproc_per_node={nproc}",
                *args,
            ]
        else:
            command = [sys.executable, *args]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(command, check=True, env=env)
        return [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("rank*.json"))]


# ------------------------------------------------------------------------------------ report
VARIANTS = ("baseline", "prolong", "prolong-demo", "prolong-demo-bf16")


def bench_step(seq_len: int, n_docs: int, steps: int, threads: int) -> dict:
    from prolong.model.loss import native_cpu_bf16

    rows = {}
    # bf16 autocast only where the CPU computes it natively (elsewhere it is emulated, many times slower)
    for variant in VARIANTS if native_cpu_bf16() else VARIANTS[:-1]:
        result = _subprocess(variant, seq_len, n_docs, steps, threads)[0]
        step_cpu = statistics.median(result["cpu"][1:] or result["cpu"])  # the first step warms up
        rows[variant] = {
            "tokens_per_cpu_s": seq_len / step_cpu,
            "cpu_s": step_cpu,
            "wall_s": statistics.median(result["times"][1:] or result["times"]),
            "peak_rss_mb": result["peak_rss"] / MB,
            "step_peak_mb": (result["peak_rss"] - result["rss_before"]) / MB,
            "loss": result["loss"],
        }
    return rows


def bench_sp_memory(seq_len: int, n_docs: int, threads: int) -> dict:
    rows = {}
    for sp in (1, 2):
        ranks = _subprocess("prolong", seq_len, n_docs, steps=1, threads=threads, nproc=sp)
        rows[sp] = {
            "peak_rss_mb": max(r["peak_rss"] for r in ranks) / MB,
            "step_peak_mb": max(r["peak_rss"] - r["rss_before"] for r in ranks) / MB,
            "loss": ranks[0]["loss"],
        }
    return rows


def report(step: dict, sp: dict, seq_len: int, sp_len: int, n_docs: int, command: str, threads: int) -> str:
    base, ours, demo = step["baseline"], step["prolong"], step["prolong-demo"]
    speed = ours["tokens_per_cpu_s"] / base["tokens_per_cpu_s"]
    demo_speed = demo["tokens_per_cpu_s"] / base["tokens_per_cpu_s"]
    memory = ours["peak_rss_mb"] / base["peak_rss_mb"]
    shape = ", ".join(f"{k}={v}" for k, v in MODEL.items())
    names = {
        "baseline": "transformers Trainer step, DataCollatorWithFlattening + sdpa",
        "prolong": "prolong train_step (per-document attention, chunked loss, activation checkpointing, FSDP2)",
        "prolong-demo": "prolong train_step as the demo runs it (no activation checkpointing, tiny-demo's "
                        f"{demo_loss_chunk_tokens()}-token loss chunks)",
        "prolong-demo-bf16": "the same under CPU bf16 autocast (the demo's cpu_compute_dtype auto on this CPU)",
    }
    lines = [
        "## Training step (`benchmarks/bench_train.py`)",
        "",
        (
            f"`{command}` — {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, CPU, float32 unless noted, "
            f"torch {torch.__version__}, {threads} torch thread(s) per variant. Model: Llama-shaped, {shape}. "
            "Fresh subprocess per variant; speed = tokens per CPU-second of the step (process time, all threads: "
            "on a shared machine wall time also measures the other jobs; the wall column is for reference); "
            "peak = peak RSS of the process (includes torch itself), step peak = peak minus RSS right before the "
            "first step."
        ),
        "",
        f"### One optimizer step, {seq_len // K}K tokens in {n_docs} packed documents",
        "",
        "| variant | tokens per CPU-s | step CPU (s) | step wall (s) | peak RSS (MB) | step peak (MB) | loss |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for variant, row in step.items():
        lines.append(
            f"| {names[variant]} | {row['tokens_per_cpu_s']:,.0f} | {row['cpu_s']:.2f} | {row['wall_s']:.2f} | "
            f"{row['peak_rss_mb']:,.0f} | {row['step_peak_mb']:,.0f} | {row['loss']:.4f} |"
        )
    lines += [
        "",
        (
            "The baseline is the computation of `Trainer.training_step` plus its optimizer step, written out: the "
            "Trainer class itself needs `accelerate`, which is not a dependency of this project."
        ),
        "",
        (
            f"prolong / baseline: **{speed:.2f}x tokens per CPU-second** with activation checkpointing (goal >= 1.5x), "
            f"**{demo_speed:.2f}x** as the demo runs it (goal >= 3x); **{memory:.2f}x peak memory** with checkpointing "
            f"(goal <= 0.5x), {demo['peak_rss_mb'] / base['peak_rss_mb']:.2f}x as the demo runs it. The float32 losses "
            "agree: all are the mean over the same valid tokens (each document's first token is not predicted from the "
            "previous one)."
        ),
    ]
    if "prolong-demo-bf16" in step:
        bf16 = step["prolong-demo-bf16"]
        lines += ["", (
            f"With bf16 autocast (this CPU has native bf16): **{bf16['tokens_per_cpu_s'] / base['tokens_per_cpu_s']:.2f}x** "
            f"the baseline, {bf16['tokens_per_cpu_s'] / demo['tokens_per_cpu_s']:.2f}x the float32 demo step; its loss "
            "differs from float32's by bf16 rounding only."
        )]
    else:
        lines += ["", "This CPU has no native bf16: the bf16-autocast variant is not run (it would be emulated)."]
    lines += [
        "",
        f"### Sequence parallelism: memory per rank, one step at {sp_len // K}K tokens ({n_docs} documents)",
        "",
        "| sequence parallel | ranks | peak RSS per rank (MB) | step peak per rank (MB) | loss |",
        "|---:|---:|---:|---:|---:|",
    ]
    for degree, row in sp.items():
        lines.append(
            f"| {degree} | {degree} | {row['peak_rss_mb']:,.0f} | {row['step_peak_mb']:,.0f} | {row['loss']:.4f} |"
        )
    lines += [
        "",
        (
            f"SP=2 / SP=1 step peak per rank: **{sp[2]['step_peak_mb'] / sp[1]['step_peak_mb']:.2f}x** "
            "(same loss: SP is exact). Ranks are gloo processes on one CPU; the all-to-all goes through shared memory."
        ),
        "",
        "No GPU was available to this run: tokens/s and MFU of a 1B model at 32K/64K with flash-attn varlen are not measured.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="4K / 8K tokens instead of 16K / 32K")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per variant (default 1)")
    parser.add_argument("--out", default=str(HERE / "results" / "train.md"))
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--seq-len", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--docs", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # a worker
        if args.variant == "baseline":
            result = run_baseline(args.seq_len, args.docs, args.steps)
        else:
            result = run_prolong(args.seq_len, args.docs, args.steps, demo=args.variant.startswith("prolong-demo"),
                                 bf16=args.variant == "prolong-demo-bf16")
        Path(args.result, f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(result))
        return 0
    seq_len, sp_len = (4 * K, 8 * K) if args.quick else (16 * K, 32 * K)
    step = bench_step(seq_len, 8, steps=3, threads=args.threads)
    sp = bench_sp_memory(sp_len, 8, args.threads)
    command = "python benchmarks/bench_train.py" + (" --quick" if args.quick else "")
    command += f" --threads {args.threads}" if args.threads != 1 else ""
    text = report(step, sp, seq_len, sp_len, 8, command, args.threads)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
