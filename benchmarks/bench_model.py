"""Model-layer benchmarks (CPU, baseline in the same run, reported as ratios).

    python benchmarks/bench_model.py [--quick] [--out benchmarks/results/model.md]

1. Attention, forward+backward: per-document SDPA (prolong's CPU backend) vs one SDPA call with a dense
   block-diagonal causal mask, 8 documents in a 16K-token sequence. Goal: >= 5x faster.
2. Loss peak memory, 32K tokens x 32K vocabulary, forward+backward: chunked checkpointed cross-entropy vs
   full [T, V] logits. Peak RSS of a fresh subprocess per variant. Goal: <= 1/3.
3. Peak memory of a tiny model's full training step (forward, chunked loss, backward) at 8K..64K tokens,
   8 documents per sequence. Goal: about linear growth.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F

K = 1024
GB = 1024**3
MB = 1024**2


def _doc_lens(total: int, n_docs: int, seed: int = 0) -> list[int]:
    """n_docs random positive lengths summing to total (mixed short and long documents, seeded)."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(n_docs, generator=g) + 0.25
    lens = (weights / weights.sum() * total).floor().long().clamp(min=1)
    lens[-1] += total - int(lens.sum())
    return lens.tolist()


def _status_bytes(field: str) -> int:
    """A memory field (VmRSS, VmHWM) of /proc/self/status in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _start_peak() -> int:
    """Reset the peak-RSS mark to the current RSS and return it (the baseline of a measurement).

    Not getrusage's ru_maxrss: Linux carries it across fork+exec, so a child started by a big parent
    would report the parent's size. VmHWM belongs to the new process and can be reset (clear_refs 5).
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_bytes("VmRSS")
    except OSError:
        return _status_bytes("VmHWM")


def _peak_rss() -> int:
    return _status_bytes("VmHWM")


# ---------------------------------------------------------------- 1. attention speed (in process, timed)


def bench_attention(
    seq_len: int, n_docs: int, heads: int, kv_heads: int, head_dim: int, repeats: int
) -> dict:
    """Median fwd+bwd seconds of per-document SDPA and of a dense block-diagonal mask (same inputs)."""
    from prolong.model.attention import document_attention

    lens = _doc_lens(seq_len, n_docs)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(seq_len, heads, head_dim, generator=g).requires_grad_()
    k = torch.randn(seq_len, kv_heads, head_dim, generator=g).requires_grad_()
    v = torch.randn(seq_len, kv_heads, head_dim, generator=g).requires_grad_()
    scale = head_dim**-0.5
    doc_id = torch.repeat_interleave(torch.arange(n_docs), torch.tensor(lens))
    pos = torch.arange(seq_len)
    dense_mask = (doc_id[:, None] == doc_id[None, :]) & (pos[None, :] <= pos[:, None])

    def per_doc() -> torch.Tensor:
        return document_attention(q, k, v, cu, max(lens), scale, backend="sdpa_per_doc")

    def dense() -> torch.Tensor:
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None],
            k.transpose(0, 1)[None],
            v.transpose(0, 1)[None],
            attn_mask=dense_mask,
            scale=scale,
            enable_gqa=heads != kv_heads,
        )
        return out[0].transpose(0, 1)

    def timed(fn) -> float:
        q.grad = k.grad = v.grad = None
        start = time.perf_counter()
        fn().square().sum().backward()
        return time.perf_counter() - start

    torch.testing.assert_close(per_doc(), dense(), atol=1e-5, rtol=1e-4)  # same numbers, first
    times: dict[str, list[float]] = {"per_doc": [], "dense": []}
    for _ in range(repeats):  # interleaved, so background load hits both alike
        times["per_doc"].append(timed(per_doc))
        times["dense"].append(timed(dense))
    med = {name: statistics.median(values) for name, values in times.items()}
    return {
        "seq_len": seq_len,
        "n_docs": n_docs,
        "doc_lens": lens,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "repeats": repeats,
        "per_doc_s": med["per_doc"],
        "dense_s": med["dense"],
        "speedup": med["dense"] / med["per_doc"],
    }


# ------------------------------------------------------------- 2./3. memory (one subprocess per variant)


def _child_loss(variant: str, tokens: int, vocab: int, hidden: int) -> dict:
    from prolong.model.loss import chunked_cross_entropy

    g = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, hidden, generator=g).requires_grad_()
    w = (0.02 * torch.randn(vocab, hidden, generator=g)).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), generator=g)
    base = _start_peak()
    start = time.perf_counter()
    if variant == "chunked":
        loss_sum, count = chunked_cross_entropy(h, w, labels, chunk_tokens=2048, kernel="chunked")
        loss = loss_sum / count
    else:
        loss = F.cross_entropy(h @ w.t(), labels)
    loss.backward()
    return {
        "loss": loss.item(),
        "seconds": time.perf_counter() - start,
        "base_rss": base,
        "peak_rss": _peak_rss(),
    }


def _child_train(tokens: int, n_docs: int, vocab: int) -> dict:
    from transformers import AutoModelForCausalLM

    from prolong.model.attention import register_attention
    from prolong.model.batch import make_packed_batch
    from prolong.model.io import build_config
    from prolong.model.loss import CausalLMWithChunkedLoss

    config = build_config(
        "llama",
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=tokens,
        rope_theta=8e6,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=register_attention("sdpa_per_doc"))
    step = CausalLMWithChunkedLoss(model, chunk_tokens=2048, kernel="chunked")
    ids = torch.randint(0, vocab, (tokens,), generator=torch.Generator().manual_seed(0))
    batch = make_packed_batch(ids, _doc_lens(tokens, n_docs))
    base = _start_peak()
    start = time.perf_counter()
    loss_sum, count = step(batch)
    (loss_sum / count).backward()
    return {"seconds": time.perf_counter() - start, "base_rss": base, "peak_rss": _peak_rss()}


def _run_child(args: list[str]) -> dict:
    """Run this file in a fresh interpreter (clean peak-RSS counter) and return its JSON result."""
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


def bench_loss_memory(tokens: int, vocab: int, hidden: int) -> dict:
    results = {v: _run_child(["loss", v, str(tokens), str(vocab), str(hidden)]) for v in ("chunked", "full")}
    delta = {v: r["peak_rss"] - r["base_rss"] for v, r in results.items()}
    return {
        "tokens": tokens,
        "vocab": vocab,
        "hidden": hidden,
        "results": results,
        "delta": delta,
        "ratio": delta["chunked"] / delta["full"],
        "peak_ratio": results["chunked"]["peak_rss"] / results["full"]["peak_rss"],
    }


def bench_train_memory(lengths: list[int], n_docs: int, vocab: int) -> list[dict]:
    rows = []
    for tokens in lengths:
        result = _run_child(["train", str(tokens), str(n_docs), str(vocab)])
        rows.append({"tokens": tokens, **result, "delta": result["peak_rss"] - result["base_rss"]})
    return rows


# ------------------------------------------------------------------------------------------- report


def render(cmd: str, attention: dict, loss: dict, train: list[dict], note: str) -> str:
    lines = [
        "## Model layer (prolong/model)",
        "",
        f"Command: `{cmd}`  ",
        (
            f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; CPU only "
            f"({platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads, "
            f"{psutil.virtual_memory().total / GB:.0f} GiB RAM, shared with other jobs: ratios, not absolute times)."
        ),
        "",
        "### Attention: per-document SDPA vs dense block-diagonal mask (forward + backward)",
        "",
        (
            f"{attention['seq_len'] // K}K tokens, {attention['n_docs']} documents of random lengths "
            f"({min(attention['doc_lens'])}..{max(attention['doc_lens'])}), {attention['heads']} query heads, "
            f"{attention['kv_heads']} KV heads, head dim {attention['head_dim']}, float32; median of "
            f"{attention['repeats']} interleaved runs; outputs checked equal first."
        ),
        "",
        "| variant | fwd+bwd (s) | speed-up |",
        "|---|---:|---:|",
        f"| dense [T, T] block-diagonal mask, one SDPA call | {attention['dense_s']:.2f} | 1.0x |",
        (
            f"| prolong `sdpa_per_doc` (one causal SDPA per document) | {attention['per_doc_s']:.2f} | "
            f"**{attention['speedup']:.1f}x** |"
        ),
        "",
        f"Goal >= 5x: {'met' if attention['speedup'] >= 5 else 'NOT met'}.",
        "",
        "### Loss peak memory: chunked (2,048-token checkpointed chunks) vs full logits",
        "",
        (
            f"{loss['tokens'] // K}K tokens x {loss['vocab'] // K}K vocabulary, hidden {loss['hidden']}, float32, "
            "forward + backward, each variant in a fresh subprocess; 'added' = peak RSS minus RSS after the "
            "inputs were allocated."
        ),
        "",
        "| variant | peak RSS (GiB) | added by the loss (GiB) | time (s) |",
        "|---|---:|---:|---:|",
    ]
    for variant in ("full", "chunked"):
        r = loss["results"][variant]
        lines.append(
            f"| {variant} | {r['peak_rss'] / GB:.2f} | {loss['delta'][variant] / GB:.2f} | {r['seconds']:.1f} |"
        )
    lines += [
        "",
        (
            f"Chunked / full: **{loss['ratio']:.3f}** of the added memory ({loss['peak_ratio']:.3f} of the whole "
            f"process peak). Goal <= 1/3: {'met' if loss['ratio'] <= 1 / 3 else 'NOT met'}."
        ),
        "",
        "### Peak memory of a tiny model's training step vs sequence length",
        "",
        (
            "Llama-style, 2 layers, hidden 64, 4 heads / 2 KV heads, vocab 32K, 8 documents per sequence, "
            "`sdpa_per_doc` attention, chunked loss, forward + backward, fresh subprocess per length."
        ),
        "",
        "| tokens | peak RSS (GiB) | added by the step (MiB) | extra MiB per extra 1K tokens | time (s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    previous = None
    for row in train:
        slope = "-"
        if previous is not None:
            slope = (
                f"{(row['delta'] - previous['delta']) / MB / ((row['tokens'] - previous['tokens']) / K):.1f}"
            )
        lines.append(
            f"| {row['tokens'] // K}K | {row['peak_rss'] / GB:.2f} | {row['delta'] / MB:.0f} | {slope} | "
            f"{row['seconds']:.1f} |"
        )
        previous = row
    growth = train[-1]["delta"] / train[0]["delta"]
    length_growth = train[-1]["tokens"] / train[0]["tokens"]
    lines += [
        "",
        (
            f"{length_growth:.0f}x more tokens -> {growth:.1f}x more step memory "
            f"(linear would be {length_growth:.0f}x, quadratic {length_growth**2:.0f}x). The fixed part is "
            "one chunk of logits (2,048 x vocabulary, float32, with its softmax and gradient), independent of "
            "the length; beyond it the step grows by a constant amount per token (the 'extra' column): linear."
        ),
        "",
        note,
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes (about a minute), for a smoke run"
    )
    parser.add_argument("--out", default="benchmarks/results/model.md", help="markdown results file")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for every variant (1 by default: on a shared machine, oversubscribed OpenMP "
        "threads make timings erratic)",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.child:
        kind, *rest = args.child
        if kind == "loss":
            result = _child_loss(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
        else:
            result = _child_train(int(rest[0]), int(rest[1]), int(rest[2]))
        print(json.dumps(result))
        return

    if args.quick:
        attn_cfg = {"seq_len": 4 * K, "n_docs": 8, "heads": 4, "kv_heads": 2, "head_dim": 64, "repeats": 2}
        loss_tokens, loss_vocab, lengths = 8 * K, 8 * K, [2 * K, 4 * K, 8 * K]
    else:
        attn_cfg = {"seq_len": 16 * K, "n_docs": 8, "heads": 4, "kv_heads": 2, "head_dim": 64, "repeats": 2}
        loss_tokens, loss_vocab, lengths = 32 * K, 32 * K, [8 * K, 16 * K, 32 * K, 64 * K]
    note = (
        "No GPU in this run: the CUDA varlen / flash-attn backends were not benchmarked (nor their "
        "equivalence tests run; they skip without CUDA). Timings use "
        f"{args.threads} torch thread(s) per variant (`--threads`): on shared cores, oversubscribed OpenMP "
        "threads make the per-document timings erratic."
    )
    # Full 32K x 32K logits need ~9-10 GiB (logits, log-softmax, their gradients); do not push a shared
    # machine into swap/OOM: halve the tokens (the ratio scales the same way) and say so.
    needed = 3.0 * loss_tokens * loss_vocab * 4  # measured: ~2.3x the logits tensor at 8K x 8K
    if psutil.virtual_memory().available < needed:
        loss_tokens //= 2
        note += (
            f" The loss comparison ran at {loss_tokens // K}K tokens because only "
            f"{psutil.virtual_memory().available / GB:.0f} GiB were free."
        )

    t0 = time.perf_counter()
    print("loss memory ...", flush=True)
    loss = bench_loss_memory(loss_tokens, loss_vocab, hidden=256)
    print(f"  chunked/full added memory {loss['ratio']:.3f}", flush=True)
    print("train-step memory ...", flush=True)
    train = bench_train_memory(lengths, n_docs=8, vocab=32 * K)
    for row in train:
        print(f"  {row['tokens'] // K}K: +{row['delta'] / MB:.0f} MiB in {row['seconds']:.1f}s", flush=True)

    print("attention ...", flush=True)
    attention = bench_attention(**attn_cfg)
    print(
        f"  per-doc {attention['per_doc_s']:.2f}s dense {attention['dense_s']:.2f}s "
        f"-> {attention['speedup']:.1f}x",
        flush=True,
    )
    cmd = "python benchmarks/bench_model.py" + (" --quick" if args.quick else "")
    cmd += f" --threads {args.threads}" if args.threads != 1 else ""
    report = render(cmd, attention, loss, train, note)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)
    print(f"total {time.perf_counter() - t0:.0f}s; written to {out}")


if __name__ == "__main__":
    main()
