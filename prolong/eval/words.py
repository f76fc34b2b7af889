"""Seeded random strings for synthetic tasks: word keys, 7-digit numbers, UUIDs, word lists, essays."""

from __future__ import annotations

import functools
import random
import uuid
from importlib import resources
from pathlib import Path

from prolong.errors import UserError

# Prose used for the essay haystack when the user points at none (license texts ship with Debian/Ubuntu).
DEFAULT_ESSAY_PATHS = ("/usr/share/common-licenses",)


@functools.cache
def word_list(kind: str) -> tuple[str, ...]:
    """wonderwords' English word lists ('adjective', 'noun', 'verb') as RULER reads them (every entry)."""
    try:
        assets = resources.files("wonderwords") / "assets"
    except ModuleNotFoundError as error:
        raise UserError("synthetic tasks need `wonderwords`: pip install 'prolong[eval]'") from error
    text = (assets / f"{kind}list.txt").read_text(encoding="utf-8")
    return tuple(sorted({w.strip() for w in text.split("\n") if w.strip()}))


def word_key(rng: random.Random) -> str:
    """RULER word key: adjective-noun."""
    return f"{rng.choice(word_list('adjective'))}-{rng.choice(word_list('noun'))}"


def number_value(rng: random.Random) -> str:
    """RULER number value: 7 digits."""
    return str(rng.randint(1_000_000, 9_999_999))


def uuid4(rng: random.Random) -> str:
    """A UUID4 string drawn from `rng` (uuid.uuid4 reads the OS entropy pool, which cannot be seeded)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _read_prose(path: Path) -> str:
    from prolong.data.text_files import jsonl_records, read_text_file  # one reader: located errors

    if path.suffix == ".jsonl":
        return "\n".join(str(row.get("text", "")) for _, row in jsonl_records(path))
    return str(read_text_file(path))


@functools.cache
def essay_words(path: str | None) -> tuple[str, ...]:
    """Whitespace-split words of a prose file or directory (.txt/.md/.jsonl 'text' or extension-less files)."""
    candidates = [path] if path else [p for p in DEFAULT_ESSAY_PATHS if Path(p).exists()]
    if not candidates:
        raise UserError(
            "the essay haystack needs prose: pass essay_path (a text file, or a directory of .txt/.md/.jsonl "
            "files with a 'text' field)"
        )
    root = Path(candidates[0])
    if not root.exists():
        raise UserError(f"essay_path {root} does not exist (expected a text file or a directory of them)")
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix in ("", ".txt", ".md", ".jsonl")
    )
    words = tuple(w for f in files for w in _read_prose(f).split())
    if len(words) < 100:
        raise UserError(f"essay_path {root} holds only {len(words)} words; point it at more prose")
    return words
