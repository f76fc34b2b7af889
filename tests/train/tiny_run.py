"""A tiny three-stage recipe (stage1 -> stage2 -> sft) over generated corpora, for the run tests."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import yaml

WORDS = ["json", "encode", "value", "def", "return", "self", "string", "object", "list", "the", "of", "long"]


def write_corpora(root: Path) -> dict[str, str]:
    """books (long), web (short) and chat (sft) corpora as jsonl; returns their paths."""
    rng = random.Random(0)
    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    rows = {
        "books": [{"text": words(rng.randint(300, 900))} for _ in range(40)],
        "web": [{"text": words(rng.randint(5, 80))} for _ in range(300)],
        "chat": [
            {
                "messages": [
                    {"role": "user", "content": words(8)},
                    {"role": "assistant", "content": words(rng.randint(3, 40))},
                ]
            }
            for _ in range(120)
        ],
    }
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, items in rows.items():
        paths[name] = str(root / f"{name}.jsonl")
        Path(paths[name]).write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")
    return paths


def tiny_recipe(
    corpora: dict[str, str], output_dir: Path, shard_dir: Path, tokenizer: dict[str, Any]
) -> dict:
    """Qwen2-shaped GQA model, 128-token stage 1 with a new rope theta, 256-token stage 2 carrying AdamW."""
    return {
        "name": "tiny",
        "output_dir": str(output_dir),
        "model": {
            "init": {
                "architecture": "qwen2",
                "hidden_size": 64,
                "intermediate_size": 96,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "max_position_embeddings": 128,
            },
            "dtype": "float32",
        },
        "tokenizer": tokenizer,
        "data": {
            "shard_dir": str(shard_dir),
            "num_workers": 1,
            "domains": [
                {"name": "books", "kind": "long", "sources": [{"type": "jsonl", "path": corpora["books"]}]},
                {"name": "web", "kind": "short", "sources": [{"type": "jsonl", "path": corpora["web"]}]},
                {"name": "chat", "kind": "sft", "sources": [{"type": "jsonl", "path": corpora["chat"]}]},
            ],
        },
        "stages": [
            {
                "name": "stage1",
                "seq_len": 128,
                "tokens_per_step": 512,
                "steps": 12,
                "lr": 1e-3,
                "min_lr": 1e-4,
                "rope": {"theta": 40000},
                "mixture": [{"domain": "books", "proportion": 0.6}, {"domain": "web", "proportion": 0.4}],
            },
            {
                "name": "stage2",
                "seq_len": 256,
                "tokens_per_step": 512,
                "steps": 4,
                "lr": 5e-4,
                "min_lr": 5e-5,
                "rope": {"theta": 160000},
                "carry_optimizer_state": True,
                "mixture": [
                    {"domain": "books", "proportion": 0.3},
                    {"domain": "books", "proportion": 0.3, "doc_len": 128},
                    {"domain": "web", "proportion": 0.4},
                ],
            },
            {
                "name": "sft",
                "kind": "sft",
                "seq_len": 128,
                "tokens_per_step": 512,
                "steps": 3,
                "lr": 1e-4,
                "warmup_ratio": 0.05,
                "min_lr": 1e-5,
                "mixture": [{"domain": "chat", "proportion": 1.0}],
            },
        ],
        "training": {"checkpoint_every": 4, "keep_checkpoints": 2, "attention_backend": "sdpa_per_doc"},
    }


def write_recipe(recipe: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path
