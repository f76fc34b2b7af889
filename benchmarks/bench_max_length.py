"""The longest trainable sequence of Llama-3.1-8B on 1-8 GPUs of 80 GiB, per memory policy (issue 14).

    python benchmarks/bench_max_length.py [--gpus 1,8,4,2] [--variants tiled,offload,sp,plain]
                                          [--out benchmarks/results/max_length.json]
    python benchmarks/bench_max_length.py --explain GPUS,SEQ_LEN[,VARIANT[,LAYERS]]

Each cell is `prolong plan --max-length`'s search (prolong.plan.search.longest_length: shallow probes,
the answer a dry run of all 32 layers) on UltraLong's extend-1m stage (Llama-3.1-8B shape, YaRN,
cross-document attention, gradient accumulation) at that world size, with one memory policy:

  plain       no sequence parallelism; FSDP2 over the GPUs, activation checkpointing, chunked loss
  +SP         Ulysses over all the GPUs (up to 8: Llama-3.1-8B's 8 KV heads)
  +offload    and the checkpointed layer inputs (offload_activations) and the sharded parameters,
              gradients and AdamW state (offload_parameters) in host memory
  +tiled MLP  and the MLP over sequence tiles (tiled_mlp)
  +norms      and the RMSNorms too (tiled_norms: this issue's fix of the largest backward temporaries)

80 GiB GPUs less the planner's 10% reserve: 72 GiB usable. Host memory per GPU is printed too.
Finished cells are kept in --out, so an interrupted run resumes. --explain prints what one GPU holds at
the peak of one cell's policy at one length (`prolong plan --explain`; LAYERS: build only that many).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

from prolong.config import format_count, load_recipe
from prolong.plan.model_config import plan_model
from prolong.plan.report import Capacity
from prolong.plan.search import longest_length

GIB = 2**30
GPU = Capacity(80 * GIB)
OFF = {"offload_activations": False, "offload_parameters": False, "tiled_mlp": False, "tiled_norms": False}
VARIANTS: dict[str, tuple[str, bool, dict[str, bool]]] = {  # name: (label, SP over the GPUs, policy)
    "plain": ("plain", False, OFF),
    "sp": ("+SP", True, OFF),
    "offload": ("+SP+offload", True, {**OFF, "offload_activations": True, "offload_parameters": True}),
    "mlp": ("+SP+offload+tiled MLP", True, {**OFF, "offload_activations": True, "offload_parameters": True,
                                          "tiled_mlp": True}),
    "tiled": (
        "+SP+offload+tiled MLP+tiled norms",
        True,
        {"offload_activations": True, "offload_parameters": True, "tiled_mlp": True, "tiled_norms": True},
    ),
}
# where each search starts, per GPU of sequence parallelism (a guess near the answer saves dry runs)
START = {"plain": 32 * 1024, "sp": 64 * 1024, "offload": 256 * 1024, "mlp": 384 * 1024, "tiled": 512 * 1024}
ALST = {1: "500K", 8: "3.7M"}  # Bekman et al. 2025, Llama-8B on H100 80GB; plain HF ~32K


def cell(gpus: int, variant: str, start: int) -> dict:
    label, use_sp, policy = VARIANTS[variant]
    recipe = load_recipe("ultralong-8b")
    stage = recipe.stage("extend-1m").model_copy(update={**policy, "sequence_parallel": 1})
    recipe = recipe.model_copy(update={"stages": [stage if s.name == stage.name else s for s in recipe.stages]})
    config = plan_model(recipe).config
    sp = min(gpus, 8) if use_sp else 1
    started = time.perf_counter()
    result = longest_length(
        recipe, stage, gpus, config, GPU, sp, progress=lambda line: print(line, file=sys.stderr, flush=True),
        precision=1 / 8, start=start,
    )
    return {
        "gpus": gpus, "variant": variant, "label": label, "sp": sp, "max_seq_len": result.max_seq_len,
        "peak": result.peak, "dry_runs": result.dry_runs, "seconds": time.perf_counter() - started,
        "host": result.host,
    }


def stage_with(variant: str, gpus: int, seq_len: int):
    """(recipe, stage) of UltraLong's extend-1m at `seq_len` on `gpus` GPUs under `variant`."""
    _, use_sp, policy = VARIANTS[variant]
    sp = min(gpus, 8) if use_sp else 1
    recipe = load_recipe("ultralong-8b")
    stage = recipe.stage("extend-1m").model_copy(
        update={**policy, "seq_len": seq_len, "sequence_parallel": sp, "tokens_per_step": 2 * seq_len * gpus // sp}
    )
    recipe = recipe.model_copy(update={"stages": [stage if s.name == stage.name else s for s in recipe.stages]})
    return recipe, stage


def explain(spec: str) -> None:
    from prolong.plan.peak import explain_peak, format_peak
    from prolong.plan.report import format_plan

    gpus, seq_len, *rest = spec.split(",")
    variant = rest[0] if rest else "tiled"
    layers = int(rest[1]) if len(rest) > 1 else None
    recipe, stage = stage_with(variant, int(gpus), int(seq_len))
    run, groups = explain_peak(recipe, stage, int(gpus), plan_model(recipe).config, layers=layers)
    print(format_plan(recipe.name, "llama-3.1-8b", run, GPU))
    print(format_peak(groups, 25))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", default="1,8,4,2")
    parser.add_argument("--variants", default="tiled,mlp,offload,sp,plain")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "max_length.json"))
    parser.add_argument("--explain", help="GPUS,SEQ_LEN[,VARIANT[,LAYERS]]: the tensors at the peak")
    args = parser.parse_args()
    if args.explain:
        return explain(args.explain)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else []  # finished cells are kept (resume)
    done = {(r["gpus"], r["variant"]) for r in results}
    gpu_counts = [int(g) for g in args.gpus.split(",")]
    for variant in args.variants.split(","):  # the headline policy first: its cells are the goal
        for gpus in gpu_counts:
            if (gpus, variant) in done:
                continue
            sp = min(gpus, 8) if VARIANTS[variant][1] else 1
            results.append(cell(gpus, variant, START[variant] * sp))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=1))
    print(table(results))


def table(results: list[dict]) -> str:
    labels = [VARIANTS[v][0] for v in VARIANTS]
    lines = [
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. Longest seq_len that fits (GiB per GPU "
        "there); 72 GiB usable of 80.",
        "",
        "| GPUs | " + " | ".join(labels) + " | ALST (published) |",
        "|---:|" + "---:|" * len(labels) + "---|",
    ]
    for gpus in sorted({r["gpus"] for r in results}):
        row = []
        for variant in VARIANTS:
            r = next((r for r in results if (r["gpus"], r["variant"]) == (gpus, variant)), None)
            if r is None:
                row.append("")
            elif not r["max_seq_len"]:
                row.append("none")
            else:
                host = f", host {r['host'] / GIB:.0f}" if r["host"] else ""
                row.append(f"{format_count(r['max_seq_len'])} ({r['peak'] / GIB:.1f}{host})")
        lines.append(f"| {gpus} | " + " | ".join(row) + f" | {ALST.get(gpus, '')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
