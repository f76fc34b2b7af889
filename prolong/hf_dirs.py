"""What a local Hugging Face model or tokenizer directory must hold, checked without importing torch.

prolong loads models and tokenizers from local directories only (nothing is downloaded), so a path
that is not such a directory is the user's to fix. `prolong.model.io` checks before it loads, and
`prolong recipe validate` checks a recipe's paths with the same functions.
"""

from __future__ import annotations

import os
from pathlib import Path

from prolong.errors import UserError

# Any of these makes a directory loadable by AutoTokenizer (fast, sentencepiece or BPE vocabularies).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class LocalDirError(UserError, FileNotFoundError):
    """A model or tokenizer path that is not a local directory holding one."""


def model_dir_problem(path: str | os.PathLike) -> str | None:
    """Why `path` is not a model directory (config.json and safetensors weights), or None."""
    directory = Path(path)
    if not directory.is_dir():
        return (
            f"{directory} is not a model directory: it does not exist (models load from local "
            "directories only; nothing is downloaded)"
        )
    if not (directory / "config.json").is_file():
        return f"{directory} is not a model directory (no config.json)"
    if not any(directory.glob("*.safetensors")):
        return f"{directory} holds no *.safetensors weights (prolong loads safetensors only)"
    return None


def tokenizer_dir_problem(path: str | os.PathLike) -> str | None:
    """Why `path` is not a tokenizer directory (one of TOKENIZER_FILES), or None."""
    directory = Path(path)
    if not directory.is_dir():
        return f"{directory} is not a tokenizer directory: it does not exist (local directories only)"
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        return f"{directory} is not a tokenizer directory (none of {', '.join(TOKENIZER_FILES)})"
    return None


def require_model_dir(path: str | os.PathLike) -> Path:
    """`path` as a Path, or LocalDirError saying what is missing."""
    problem = model_dir_problem(path)
    if problem:
        raise LocalDirError(problem)
    return Path(path)


def require_tokenizer_dir(path: str | os.PathLike) -> Path:
    """`path` as a Path, or LocalDirError saying what is missing."""
    problem = tokenizer_dir_problem(path)
    if problem:
        raise LocalDirError(problem)
    return Path(path)
