"""Checkpoint benchmark (CPU): how long the training loop is blocked per checkpoint, synchronous vs
asynchronous (training.async_checkpoint), same model, same steps, same run.

    python benchmarks/bench_checkpoint.py [--quick] [--out benchmarks/results/checkpoint.md]

One process, one gloo rank, prolong's Checkpointer on a Llama-shaped model with AdamW state. A "round"
is K training steps (forward, backward, AdamW) then one checkpoint; rounds alternate sync and async.
Blocked time = the time the loop spends inside `save` (sync: the whole write, checksums, publish;
async: the copy to host memory) plus, for async, any wait at the next save for the previous one.
Round time = the wall time of K steps plus the checkpoint, which shows what the background writer costs
the steps it overlaps (on 2 shared cores it competes with them for CPU; on a GPU node it does not).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))


def _model(hidden: int, layers: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=8192, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                         max_position_embeddings=4096, tie_word_embeddings=False)
    return LlamaForCausalLM(config).float()


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, tokens: torch.Tensor) -> None:
    loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def bench(hidden: int, layers: int, steps_per_round: int, rounds: int, seq_len: int) -> dict:
    from prolong.parallel.mesh import ParallelMesh, init_distributed
    from prolong.train.checkpoint import Checkpointer

    init_distributed()
    mesh = ParallelMesh.create(1)
    model = _model(hidden, layers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, 8192, (1, seq_len), generator=torch.Generator().manual_seed(1))
    _step(model, optimizer, tokens)  # optimizer moments exist from here on
    results: dict[str, dict[str, list[float]]] = {m: {"blocked": [], "round": []} for m in ("sync", "async")}
    step = 0
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for block in range(2):  # sync, async, sync, async: drift of the shared machine hits both
            for mode in ("sync", "async"):
                saver = Checkpointer(Path(tmp) / f"{mode}{block}", mesh, keep=2, asynchronous=mode == "async",
                                     timeout_s=600)
                for _ in range(rounds):
                    started = time.perf_counter()
                    for _ in range(steps_per_round):
                        _step(model, optimizer, tokens)
                        step += 1
                    save_started = time.perf_counter()
                    # async: save() first waits for the previous checkpoint; that wait is blocked time too
                    saver.save(step, model, optimizer, {"stage": "bench", "num_steps": 10**6, "world_size": 1})
                    results[mode]["blocked"].append(time.perf_counter() - save_started)
                    results[mode]["round"].append(time.perf_counter() - started)
                closing = time.perf_counter()
                saver.close()  # the last async checkpoint's remaining write
                results[mode]["blocked"][-1] += time.perf_counter() - closing
                results[mode]["round"][-1] += time.perf_counter() - closing
        ckpt = max((Path(tmp) / "sync0").glob("step_*"))
        size = sum(p.stat().st_size for p in ckpt.iterdir())
    params = sum(p.numel() for p in model.parameters())
    step_s = statistics.median(results["sync"]["round"]) - statistics.median(results["sync"]["blocked"])
    return {"results": results, "params": params, "bytes": size, "step_s": step_s / steps_per_round}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results" / "checkpoint.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = {"hidden": 256, "layers": 4, "steps_per_round": 2, "rounds": 2, "seq_len": 128} if args.quick else {
        "hidden": 768, "layers": 8, "steps_per_round": 4, "rounds": 4, "seq_len": 256}
    out = bench(**sizes)
    med = {m: {k: statistics.median(v) for k, v in r.items()} for m, r in out["results"].items()}
    ratio = med["sync"]["blocked"] / max(med["async"]["blocked"], 1e-9)
    load = os.getloadavg()[0]
    lines = [
        "## Checkpoints: loop blocked per checkpoint, synchronous vs asynchronous",
        "",
        f"Command: `python benchmarks/bench_checkpoint.py{' --quick' if args.quick else ''}`  ",
        (f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; CPU only ({platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, 1 thread; load average {load:.1f} at the end)."),
        "",
        (f"Llama-shaped model, {out['params'] / 1e6:.0f}M parameters, float32, with AdamW state: "
        f"{out['bytes'] / 2**20:,.0f} MiB per checkpoint (one rank). {sizes['steps_per_round']} training steps "
        f"of {sizes['seq_len']} tokens ({out['step_s']:.2f} s each) between checkpoints; 2 x {sizes['rounds']} "
        "checkpoints per mode, in blocks sync, async, sync, async; medians. prolong's `Checkpointer` both times: DCP "
        "shards, xxh3 manifest, atomic rename; async = `torch.distributed.checkpoint.async_save` (copy to "
        "host memory on the loop's thread) then write, checksum and publish on a background thread."),
        "",
        "| mode | loop blocked per checkpoint (s) | round: steps + checkpoint (s) |",
        "|---|---:|---:|",
        f"| synchronous | {med['sync']['blocked']:.2f} | {med['sync']['round']:.2f} |",
        f"| asynchronous | {med['async']['blocked']:.2f} | {med['async']['round']:.2f} |",
        "",
        (f"**Blocked time, sync / async: {ratio:.1f}x** (measured around `save`, plus the wait for the "
         "previous background write). The round times include the training steps and depend on the "
         "shared machine's load; on 2 CPU cores the background writer also competes with the steps, "
         "while on a GPU node the steps run on the GPU and the writer on idle host cores, which is why "
         "`async_checkpoint: auto` is on with GPUs and off on CPU."),
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
