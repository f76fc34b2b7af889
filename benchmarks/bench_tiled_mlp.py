"""Tiled MLP on CPU: the real peak memory of one training step at 64K tokens, tiled vs untiled.

    python benchmarks/bench_tiled_mlp.py [--quick] [--out benchmarks/results/tiled_mlp.md]

One training step (forward, chunked loss, backward, AdamW step) of a small-width Llama-shaped model
(hidden 128, intermediate 448 = 3.5x as in Llama-8B, 2 layers, activation checkpointing on, as long
runs use it) on one packed 64K-token sequence of 64 documents, float32. Each variant runs in a fresh
subprocess and is measured two ways at once:
  - torch's own tensor accounting: `torch.distributed._tools.mem_tracker.MemTracker`, peak bytes of
    live tensors by category (parameters, gradients, optimizer state, activations, temporaries);
  - the process: peak RSS (VmHWM, reset before the step) minus RSS before the step.
The two variants share weights, data and seed; their losses must agree to 1e-6 (checked).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch
from bench_model import _doc_lens, _peak_rss, _start_peak

K, MB, GB = 1024, 1024**2, 1024**3
SHAPE = {"hidden_size": 128, "intermediate_size": 448, "num_hidden_layers": 2, "vocab_size": 512}
VARIANTS = ("untiled", "tiled")


def _child(variant: str, tokens: int, n_docs: int) -> dict:
    from torch.distributed._tools.mem_tracker import MemTracker
    from transformers import AutoModelForCausalLM

    from prolong.model.attention import register_attention
    from prolong.model.batch import make_packed_batch
    from prolong.model.io import build_config
    from prolong.model.loss import CausalLMWithChunkedLoss
    from prolong.parallel.parallelize import apply_activation_policies
    from prolong.parallel.tiled_mlp import auto_tile_tokens

    config = build_config(
        "llama",
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=tokens,
        rope_theta=8e6,
        **SHAPE,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=register_attention("sdpa_per_doc"))
    model.train()
    apply_activation_policies(model, torch.device("cpu"), True, tiled_mlp=variant == "tiled")
    step = CausalLMWithChunkedLoss(model, chunk_tokens=2048, kernel="chunked")
    optimizer = torch.optim.AdamW(step.parameters(), lr=1e-4)
    ids = torch.randint(0, SHAPE["vocab_size"], (tokens,), generator=torch.Generator().manual_seed(0))
    batch = make_packed_batch(ids, _doc_lens(tokens, n_docs))
    tracker = MemTracker()
    tracker.track_external(step, optimizer)
    base = _start_peak()
    start = time.perf_counter()
    with tracker:
        loss_sum, count = step(batch)
        loss = loss_sum / count
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    peak_rss = _peak_rss()
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    return {
        "loss": loss.item(),
        "seconds": seconds,
        "base_rss": base,
        "peak_rss": peak_rss,
        "tracked": {str(getattr(k, "value", k)): v for k, v in peak.items()},
        "tile_tokens": auto_tile_tokens(tokens, SHAPE["hidden_size"]) if variant == "tiled" else None,
    }


def _run_child(args: list[str]) -> dict:
    threads = str(torch.get_num_threads())
    proc = subprocess.run(
        [sys.executable, __file__, "--threads", threads, "--child", *args],
        check=False,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def render(cmd: str, tokens: int, n_docs: int, results: dict[str, dict]) -> str:
    untiled, tiled = results["untiled"], results["tiled"]
    rss = {v: r["peak_rss"] - r["base_rss"] for v, r in results.items()}
    categories = ["Parameter", "Gradient", "Optstate", "Activation", "Temp", "Total"]
    lines = [
        "## Tiled MLP: peak memory of a training step on CPU (issue 14)",
        "",
        f"Command: `{cmd}`  ",
        (
            f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; CPU only "
            f"({platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads; shared with other jobs)."
        ),
        "",
        (
            f"One training step (forward, chunked loss, backward, AdamW step) at **{tokens // K}K tokens** "
            f"({n_docs} documents), Llama-shaped: hidden {SHAPE['hidden_size']}, intermediate "
            f"{SHAPE['intermediate_size']} (3.5x, as Llama-8B), {SHAPE['num_hidden_layers']} layers, vocab "
            f"{SHAPE['vocab_size']}, float32, activation checkpointing on, `sdpa_per_doc` attention. "
            f"Tiled: automatic tiles of {tiled['tile_tokens']} tokens. Each variant in a fresh subprocess; "
            "same weights and data (losses "
            f"{untiled['loss']:.7f} vs {tiled['loss']:.7f})."
        ),
        "",
        (
            "Measured with torch's tensor accounting (`torch.distributed._tools.mem_tracker.MemTracker`: "
            "peak bytes of live tensors, by category, MiB) and with the process's peak RSS (VmHWM reset "
            "before the step, minus RSS before it)."
        ),
        "",
        "| variant | " + " | ".join(categories) + " | peak RSS added (MiB) | time (s) |",
        "|---|" + "---:|" * (len(categories) + 2),
    ]
    for variant in VARIANTS:
        r = results[variant]
        cells = [f"{r['tracked'].get(c, 0) / MB:.0f}" for c in categories]
        lines.append(
            f"| {variant} | " + " | ".join(cells) + f" | {rss[variant] / MB:.0f} | {r['seconds']:.1f} |"
        )
    tracked_ratio = tiled["tracked"]["Total"] / untiled["tracked"]["Total"]
    rss_ratio = rss["tiled"] / rss["untiled"]
    lines += [
        "",
        (
            f"Tiled / untiled peak: **{tracked_ratio:.2f}** of the tracked tensor bytes, **{rss_ratio:.2f}** of "
            "the RSS added by the step. What goes away is the whole-sequence [T, intermediate] "
            "temporaries of the MLP (gate, up, activation, product and their gradients) in each layer's "
            "backward recompute; the tiled MLP holds them for one tile at a time. The cost is a third "
            "MLP forward per layer (forward, checkpoint recompute, per-tile recompute in backward)."
        ),
        "",
        (
            "Not measured here: the same on a GPU (bf16, CUDA caching allocator), and checkpoint offload, "
            "whose host copies live in the same RAM on a CPU (no saving to measure there)."
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16K tokens instead of 64K, for a smoke run")
    parser.add_argument("--out", default="benchmarks/results/tiled_mlp.md", help="markdown results file")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per variant")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]), int(args.child[2]))))
        return
    tokens, n_docs = (16 * K, 16) if args.quick else (64 * K, 64)
    t0 = time.perf_counter()
    results = {}
    for variant in VARIANTS:
        print(f"{variant} ...", flush=True)
        results[variant] = _run_child([variant, str(tokens), str(n_docs)])
        r = results[variant]
        print(f"  tracked peak {r['tracked']['Total'] / MB:.0f} MiB in {r['seconds']:.1f}s", flush=True)
    a, b = results["untiled"]["loss"], results["tiled"]["loss"]
    if abs(a - b) > 1e-6 * max(1.0, abs(a)):
        raise SystemExit(f"tiled and untiled losses differ: {a} vs {b}")
    cmd = "python benchmarks/bench_tiled_mlp.py" + (" --quick" if args.quick else "")
    report = render(cmd, tokens, n_docs, results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)
    print(f"total {time.perf_counter() - t0:.0f}s; written to {out}")


if __name__ == "__main__":
    main()
