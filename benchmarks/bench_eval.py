"""Evaluation engine vs plain `model.generate`: peak memory and prefill tokens/s at 32K, same tiny model.

    python benchmarks/bench_eval.py [--quick]

Each measurement runs in its own subprocess so peak RSS is clean; the variants alternate over rounds so
load from other work on a shared machine hits both alike. Both prefill the same prompt and decode one token
greedily. Reported: best and median prefill tokens/s over rounds, the largest peak RSS. Writes
benchmarks/results/eval.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "eval.md"
MODEL = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2}


def build_model(path: Path) -> None:
    """A byte-level BPE tokenizer trained on local words and a tiny random Llama, saved to `path`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from prolong.eval.synthetic import NOISE
    from prolong.eval.words import word_list

    lines = [NOISE] * 20 + [" ".join(word_list("noun")[i:i + 40]) for i in range(0, 4000, 40)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=2000, special_tokens=["<s>", "</s>", "<pad>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=131072, bos_token_id=0, eos_token_id=1,
                         pad_token_id=2, **MODEL)
    LlamaForCausalLM(config).save_pretrained(path)


def measure(variant: str, model_dir: str, length: int, repeats: int, chunk: int) -> dict:
    """Run inside the subprocess: prefill `length` tokens + 1 greedy token, `repeats` times."""
    import psutil
    import torch

    from prolong.eval.engine import HFEngine, load_for_generation

    torch.set_num_threads(1)  # the machine is shared; one thread keeps the comparison fair and stable
    model, tokenizer = load_for_generation(model_dir, dtype="float32", device="cpu")
    prompt = torch.randint(3, len(tokenizer), (length,), generator=torch.Generator().manual_seed(0)).tolist()
    rss_loaded = psutil.Process().memory_info().rss
    engine = HFEngine(model, tokenizer, prefill_chunk=chunk)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        if variant == "engine":
            engine.generate([prompt], max_new_tokens=1)
        else:
            with torch.inference_mode():
                model.generate(torch.tensor([prompt]), max_new_tokens=1, do_sample=False, pad_token_id=2)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seconds = statistics.median(times)
    return {"variant": variant, "length": length, "seconds": seconds, "tokens_per_s": length / seconds,
            "peak_rss_mb": peak / 2**20, "loaded_rss_mb": rss_loaded / 2**20,
            "prefill_extra_mb": (peak - rss_loaded) / 2**20}


def run_variant(variant: str, model_dir: str, length: int, repeats: int, chunk: int) -> dict:
    command = [sys.executable, __file__, "--variant", variant, "--model-dir", model_dir, "--length", str(length),
               "--repeats", str(repeats), "--chunk", str(chunk)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8K prompt, one repeat (seconds, not minutes)")
    parser.add_argument("--variant", choices=["engine", "generate"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=2048)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.model_dir, args.length, args.repeats, args.chunk)))
        return
    length, rounds = (8192, 2) if args.quick else (args.length, args.rounds)
    runs: dict[str, list[dict]] = {"generate": [], "engine": []}
    with tempfile.TemporaryDirectory() as tmp:
        build_model(Path(tmp))
        for _ in range(rounds):
            for variant, rows in runs.items():
                rows.append(run_variant(variant, tmp, length, 1, args.chunk))

    def combine(rows: list[dict]) -> dict:
        speeds = [r["tokens_per_s"] for r in rows]
        return {"best": max(speeds), "median": statistics.median(speeds),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
                "prefill_extra_mb": max(r["prefill_extra_mb"] for r in rows)}

    base, ours = combine(runs["generate"]), combine(runs["engine"])
    lines = [
        f"## Evaluation engine: chunked prefill vs `model.generate` ({length // 1024}K prompt)",
        "",
        (f"Command: `python benchmarks/bench_eval.py{' --quick' if args.quick else ''}` "
        f"(CPU, 1 thread, float32, tiny Llama {MODEL}, prefill chunk {args.chunk}; {rounds} alternating rounds, "
        "each measurement in its own process; prefill + 1 greedy token; shared, noisy machine: compare ratios)."),
        "",
        "| variant | prefill tokens/s (best) | (median) | peak RSS (MB) | RSS above loaded model (MB) |",
        "|---|---|---|---|---|",
    ]
    for name, row in (("`model.generate`", base), ("prolong engine (chunked prefill)", ours)):
        lines.append(f"| {name} | {row['best']:.0f} | {row['median']:.0f} | {row['peak_rss_mb']:.0f} "
                     f"| {row['prefill_extra_mb']:.0f} |")
    lines += ["", (f"Engine / generate: speed x{ours['best'] / base['best']:.2f} (best), "
              f"x{ours['median'] / base['median']:.2f} (median); memory above the loaded model "
              f"x{ours['prefill_extra_mb'] / max(base['prefill_extra_mb'], 1e-9):.2f}."), ""]
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
