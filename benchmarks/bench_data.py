"""Tokenize-and-pack throughput and memory: prolong's pipeline vs `datasets.map` + straightforward packing.

Both sides read the same JSONL corpus (real text from this machine, `prolong data local-corpus`),
use the same fast tokenizer (a byte-level BPE trained here), frame documents BOS..EOS and pack them
into fixed-length sequences with carry-over, writing the result to disk. Each run is a fresh
subprocess (peak RSS is its own). The baseline is the Hugging Face idiom: `load_dataset("json")`,
`map(tokenize, batched=True)`, then run_clm's `group_texts` with `map(batched=True)`.

    python benchmarks/bench_data.py [--quick]

Writes the table and the command to benchmarks/results/data.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEQ_LEN = 2048
PARALLEL_MIN_BYTES = 16 << 20  # prolong.data.tokenize's threshold (not imported: the driver stays light)
ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------ the two pipelines
def _cpu() -> float:
    """CPU seconds used so far by this process and its reaped children."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def run_ours(corpus: str, tokenizer: str, out: str, workers: int | None) -> dict[str, float]:
    """prolong: streamed read, parallel tokenization to a flat file, short packing into a shard."""
    import numpy as np
    import transformers  # noqa: F401  (imported before the clock, as the baseline's is)

    from prolong.config import SourceSpec
    from prolong.data.pack import plan_concatenated, shuffled_order, write_shard
    from prolong.data.sources import DocumentStream
    from prolong.data.tokenize import TokenizedDocs, tokenize_documents

    start, cpu_before = time.perf_counter(), _cpu()
    stream = DocumentStream([SourceSpec(type="jsonl", path=corpus)], "short")
    tokenize_documents(stream, tokenizer, Path(out) / "tokenized", workers, show_progress=False)
    docs = TokenizedDocs(Path(out) / "tokenized")
    order = shuffled_order(np.arange(len(docs)), None, seed=0)
    meta = write_shard(
        docs,
        plan_concatenated(order, docs.lengths, SEQ_LEN),
        Path(out) / "shard",
        {"seq_len": SEQ_LEN},
        False,
    )
    return {
        "seconds": time.perf_counter() - start,
        "tokens": docs.meta["num_tokens"],
        "sequences": meta["num_sequences"],
        "cpu_before": cpu_before,
    }


def run_baseline(corpus: str, tokenizer: str, out: str, workers: int | None) -> dict[str, float]:
    """datasets: load_dataset(json) -> map(tokenize) -> map(group_texts), the run_clm recipe."""
    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    start, cpu_before = time.perf_counter(), _cpu()  # both sides pay for loading the tokenizer
    tok = AutoTokenizer.from_pretrained(tokenizer)
    eos = tok.eos_token_id
    ds = datasets.load_dataset("json", data_files=corpus, split="train", cache_dir=str(Path(out) / "cache"))

    def tokenize(batch: dict) -> dict:
        return {"input_ids": [ids + [eos] for ids in tok(batch["text"])["input_ids"]]}

    def group_texts(batch: dict) -> dict:
        flat = [t for ids in batch["input_ids"] for t in ids]
        usable = len(flat) // SEQ_LEN * SEQ_LEN
        return {"input_ids": [flat[i : i + SEQ_LEN] for i in range(0, usable, SEQ_LEN)]}

    tokenized = ds.map(tokenize, batched=True, remove_columns=ds.column_names, num_proc=workers)
    packed = tokenized.map(group_texts, batched=True, batch_size=1000, num_proc=workers)
    seconds = time.perf_counter() - start
    tokens = int(sum(len(x) for x in tokenized.with_format("numpy")["input_ids"]))
    return {"seconds": seconds, "tokens": tokens, "sequences": len(packed), "cpu_before": cpu_before}


def _child(args: argparse.Namespace) -> None:
    fn = run_ours if args.child == "ours" else run_baseline
    result = fn(args.corpus, args.tokenizer, args.out, args.workers)
    # CPU seconds of the pipeline (worker processes and threads included): less sensitive than wall
    # time to other jobs on a shared machine
    result["cpu_seconds"] = _cpu() - result.pop("cpu_before")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["peak_child_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(result))


def measure(which: str, corpus: Path, tokenizer: Path, workers: int | None) -> dict[str, float]:
    """Run one pipeline in a fresh interpreter and return its numbers."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{which}-") as out:
        command = [
            sys.executable,
            __file__,
            "--child",
            which,
            "--corpus",
            str(corpus),
            "--tokenizer",
            str(tokenizer),
            "--out",
            out,
        ]
        if workers:
            command += ["--workers", str(workers)]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        if done.returncode:
            raise RuntimeError(f"{which} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ driver
def prepare(work: Path, megabytes: int) -> tuple[Path, Path, Path]:
    """(corpus 1x, corpus 4x, tokenizer): local-corpus text as {text} rows, and a 4096-token BPE."""
    from prolong.data.local_corpus import build_local_corpus
    from prolong.data.tokenizer_train import train_tokenizer

    build_local_corpus(work / "local", megabytes << 20)
    rows = []
    for part, field in (
        ("code/repos.jsonl", "text"),
        ("prose/docs.jsonl", "text"),
        ("short/short.jsonl", "text"),
    ):
        for line in (work / "local" / part).read_text(encoding="utf-8").splitlines():
            rows.append(json.dumps({"text": json.loads(line)[field]}))
    one = work / "corpus-1x.jsonl"
    one.write_text("\n".join(rows) + "\n", encoding="utf-8")
    four = work / "corpus-4x.jsonl"
    with open(four, "w", encoding="utf-8") as f:
        f.writelines(one.read_text(encoding="utf-8") for _ in range(4))
    texts = (json.loads(r)["text"] for r in rows[:: max(1, len(rows) // 2000)])
    tokenizer = train_tokenizer(texts, work / "tokenizer", 4096, name="bench-bpe")
    return one, four, tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller corpus, one repetition")
    parser.add_argument("--child", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    sys.path.insert(0, str(ROOT))
    megabytes, repeats = (6, 1) if args.quick else (16, 2)
    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        one, four, tokenizer = prepare(work, megabytes)
        cores = len(os.sched_getaffinity(0))
        rows = []
        # Interleave the two sides so machine noise hits both alike; keep the best of the repeats.
        best: dict[str, dict[str, float]] = {}
        for _ in range(repeats):
            for name, which, workers in (("ours", "ours", None), ("baseline", "baseline", None)):
                result = measure(which, one, tokenizer, workers)
                if name not in best or result["seconds"] < best[name]["seconds"]:
                    best[name] = result
        best["ours 4x"] = measure("ours", four, tokenizer, None)
        best["baseline 4x"] = measure("baseline", four, tokenizer, None)
        for name, r in best.items():
            rows.append((name, r))
        ratio = best["baseline"]["seconds"] / best["ours"]["seconds"]
        cpu_ratio = best["baseline"]["cpu_seconds"] / best["ours"]["cpu_seconds"]
        ratio_4x = best["baseline 4x"]["seconds"] / best["ours 4x"]["seconds"]
        cpu_ratio_4x = best["baseline 4x"]["cpu_seconds"] / best["ours 4x"]["cpu_seconds"]
        growth = best["ours 4x"]["peak_rss_mb"] / best["ours"]["peak_rss_mb"]
        size_mb = one.stat().st_size / 2**20
        report(rows, (ratio, cpu_ratio, ratio_4x, cpu_ratio_4x), growth, size_mb, cores, args.quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(
    rows: list,
    ratios: tuple[float, float, float, float],
    growth: float,
    size_mb: float,
    cores: int,
    quick: bool,
) -> None:
    lines = [
        "# Data pipeline: tokenize-and-pack",
        "",
        (
            f"Command: `python benchmarks/bench_data.py{' --quick' if quick else ''}` "
            f"({cores} cores; corpus: {size_mb:.1f} MB of local-corpus JSONL, 4x = the same file repeated 4 times; "
            f"4096-token byte-level BPE; sequences of {SEQ_LEN} tokens with carry-over)."
        ),
        "",
        (
            "Baseline: `datasets.load_dataset('json')` + `map(tokenizer, batched=True)` + run_clm `group_texts` "
            "(same fast tokenizer, BOS..EOS framing; one process, the tokenizers library's threads on all "
            "cores). Ours: its default, `prolong data build`'s: one process using the tokenizers library's threads "
            f"for sources under {PARALLEL_MIN_BYTES >> 20} MB, one worker process per core ({cores}) above; tokens "
            "streamed to a flat file, short packing into a shard. Each pipeline runs in a fresh subprocess; both clocks include loading "
            "the tokenizer, not module imports; best of the repeats, the two sides interleaved."
        ),
        "",
        (
            f"Load average at the end of the run: {os.getloadavg()[0]:.1f} on {cores} cores (a shared machine: "
            "absolute times are noisy, compare within the run)."
        ),
        "",
        "| run | wall s | CPU s | tokens | tokens/s (wall) | sequences | peak RSS main (MB) | peak RSS workers (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['seconds']:.2f} | {r['cpu_seconds']:.1f} | {r['tokens']:,} | {r['tokens'] / r['seconds']:,.0f} | {r['sequences']:,} | "
            f"{r['peak_rss_mb']:.0f} | {r['peak_child_rss_mb']:.0f} |"
        )
    lines += [
        "",
        "**Throughput ratio (ours / baseline, same run): {:.2f}x by wall time, {:.2f}x by CPU time on the "
        "1x corpus; {:.2f}x and {:.2f}x on the 4x corpus** (goal >= 1.0).".format(*ratios),
        f"**Peak RSS of our main process, 4x corpus / 1x corpus: {growth:.2f}** (goal: roughly flat).",
        "",
        (
            "Why memory stays flat: documents are streamed, at most 2 batches of ~1 MB of text per worker are in "
            "flight, tokens go straight to a flat file, and packing reads token ranges with positioned reads "
            "(the main process holds 8 bytes per document of offsets). The 1x and 4x rows of ours may differ in "
            "mode (one process below the parallel threshold, worker processes above), hence a ratio below 1."
        ),
        "",
    ]
    text = "\n".join(lines)
    out = ROOT / "benchmarks" / "results" / "data.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
