"""Shared fixtures: a small trained tokenizer and helpers to write raw corpora."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest


def _training_texts() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted((stdlib / "json").glob("*.py")) + sorted((stdlib / "email").glob("*.py"))[:8]
    return [f.read_text(encoding="utf-8") for f in files]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 512-token byte-level BPE with chat template, trained once per session."""
    from prolong.data.tokenizer_train import train_tokenizer

    return train_tokenizer(
        _training_texts(), tmp_path_factory.mktemp("tok") / "tiny-bpe", 512, name="tiny-bpe"
    )


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path):
    from prolong.model.io import load_tokenizer

    return load_tokenizer(tokenizer_dir)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
