"""The golden run: a short deterministic float32 CPU run whose per-step losses are checked in.

Any change that moves a number of the training path (data order, packing, masking, RoPE, attention,
loss, optimizer, schedule, sequence parallelism) moves these losses. Regenerate them only when a
change is meant to alter the math, and say so in the commit:

    .venv/bin/python tests/golden/golden_run.py --write     # rewrites tests/golden/losses.json

Two layouts of the same recipe: one process (sp1) and torchrun with 2 ranks as one SP=2 group (sp2).
Threads are pinned to 1 so the float reduction order does not depend on the machine's core count.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import yaml

GOLDEN_FILE = Path(__file__).with_name("losses.json")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
WORDS = ["def", "return", "value", "self", "encode", "list", "the", "of", "a", "long", "context", "model"]
PRETRAIN_STEPS, SFT_STEPS = 20, 4


def write_corpora(root: Path) -> dict[str, str]:
    """Long code-like documents, short web-like paragraphs and chat conversations (fixed seed)."""
    rng = random.Random(1234)

    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    rows = {
        "long": [{"text": words(rng.randint(400, 1200))} for _ in range(60)],
        "short": [{"text": words(rng.randint(5, 90))} for _ in range(400)],
        "chat": [
            {"messages": [{"role": "user", "content": words(10)},
                          {"role": "assistant", "content": words(rng.randint(3, 50))}]}
            for _ in range(150)
        ],
    }
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, items in rows.items():
        paths[name] = str(root / f"{name}.jsonl")
        Path(paths[name]).write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")
    return paths


def golden_recipe(corpora: dict[str, str], output_dir: Path, sequence_parallel: int) -> dict:
    """A Llama-shaped GQA model; a 256-token stage with a raised RoPE base, then SFT."""
    return {
        "name": "golden",
        "seed": 3,
        "output_dir": str(output_dir),
        "model": {
            "init": {"architecture": "llama", "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 128},
            "dtype": "float32",
        },
        "tokenizer": {"train_vocab_size": 320},
        "data": {
            "shard_dir": str(output_dir / "data"),
            "num_workers": 1,
            "domains": [
                {"name": "long", "kind": "long", "sources": [{"type": "jsonl", "path": corpora["long"]}]},
                {"name": "short", "kind": "short", "sources": [{"type": "jsonl", "path": corpora["short"]}]},
                {"name": "chat", "kind": "sft", "sources": [{"type": "jsonl", "path": corpora["chat"]}]},
            ],
        },
        "stages": [
            {"name": "extend", "seq_len": 256, "tokens_per_step": 512, "steps": PRETRAIN_STEPS,
             "lr": 2e-3, "min_lr": 2e-4, "rope": {"theta": 80000}, "sequence_parallel": sequence_parallel,
             "mixture": [{"domain": "long", "proportion": 0.3},
                         {"domain": "long", "proportion": 0.3, "doc_len": 128},
                         {"domain": "short", "proportion": 0.4}]},
            {"name": "sft", "kind": "sft", "seq_len": 256, "tokens_per_step": 512, "steps": SFT_STEPS,
             "lr": 5e-4, "min_lr": 5e-5, "warmup_ratio": 0.05, "carry_optimizer_state": True,
             "sequence_parallel": sequence_parallel,
             "mixture": [{"domain": "chat", "proportion": 1.0}]},
        ],
        "training": {"checkpoint_every": 100, "keep_checkpoints": 1, "attention_backend": "sdpa_per_doc"},
    }


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=900, check=False)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n"
                           f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}")


def stage_losses(stage_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def run_layout(root: Path, sequence_parallel: int) -> dict[str, list[float]]:
    """Build the data and train both stages with the given SP degree; the losses of each stage."""
    corpora = write_corpora(root / "raw")
    out = root / f"sp{sequence_parallel}"
    recipe_path = root / f"golden-sp{sequence_parallel}.yaml"
    recipe_path.write_text(yaml.safe_dump(golden_recipe(corpora, out, sequence_parallel)), encoding="utf-8")
    _run([sys.executable, "-m", "prolong", "data", "build", str(recipe_path)])
    if sequence_parallel == 1:
        _run([sys.executable, "-m", "prolong", "train", str(recipe_path)])
    else:
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        _run([torchrun, "--standalone", f"--nproc_per_node={sequence_parallel}", "-m", "prolong", "train",
              str(recipe_path)])
    return {stage: stage_losses(out / stage) for stage in ("extend", "sft")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite the checked-in losses")
    parser.add_argument("--root", default="/tmp/prolong-golden", help="scratch directory")
    args = parser.parse_args()
    import shutil

    root = Path(args.root)
    shutil.rmtree(root, ignore_errors=True)
    losses = {f"sp{sp}": run_layout(root / f"sp{sp}", sp) for sp in (1, 2)}
    print(json.dumps(losses, indent=1))
    if args.write:
        GOLDEN_FILE.write_text(json.dumps(losses, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {GOLDEN_FILE}")


if __name__ == "__main__":
    main()
