"""A real corpus from what any machine with Python has: code repositories and system documentation.

Written as JSONL in the formats the pipeline reads (see the recipe snippet in `build_local_corpus`):
    code/repos.jsonl   {repo, path, text}: one row per file, rows of a repository contiguous
                       (a package directory of the stdlib or site-packages is one repository)
    prose/docs.jsonl   {source, text}: man pages, /usr/share/doc, licenses; Python docstrings as fallback
    short/short.jsonl  {text}: paragraph-sized documents (a small ShortMix)
    sft/chat.jsonl     {messages}: instruction conversations made from the code (docstrings as answers)
    retrieval/retrieval.jsonl  {kind, text}: short synthetic retrieval and copy documents
                       (prolong.data.retrieval_corpus), haystacks from the prose, words from the code
    retrieval/passkey.jsonl    {prompt, completion}: one-digit passkey questions and answers (an SFT domain)
Traversal is sorted and sizes are capped, so the output is the same on a given machine.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

from prolong.data.retrieval_corpus import passkey_rows, retrieval_documents
from prolong.data.text_files import read_text_file
from prolong.errors import UserError

CODE_SUFFIXES = {".py", ".pyi", ".txt", ".rst", ".md", ".cfg", ".toml", ".ini", ".c", ".h", ".json"}
MAX_FILE_BYTES = 256 << 10
MAX_REPO_BYTES = 2 << 20  # so one huge package (torch) does not become the whole corpus
SHARES = {"code": 0.45, "prose": 0.3, "short": 0.1, "sft": 0.1, "retrieval": 0.05}
IDENTIFIER = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]{3,24}\b")
PASSKEY_ROWS = 8000  # rows of retrieval/passkey.jsonl (about 3 MB), beside the byte shares above
HAYSTACK_TEXTS = 400  # prose documents (haystacks, passages) and code files (passages) for retrieval


def _package_dirs() -> list[tuple[str, Path]]:
    """(repository name, directory) for each package of the stdlib and site-packages, sorted."""
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
    seen: set[Path] = set()
    repos = []
    for root in roots:
        if not root.is_dir() or root in seen:
            continue
        seen.add(root)
        for child in sorted(root.iterdir()):
            if child.is_dir() and child.name.isidentifier() and any(child.glob("*.py")):
                repos.append((f"{root.name}/{child.name}", child))
    return repos


def _read(path: Path) -> str | None:
    """The text of a file found on the machine, or None for one that is unreadable, binary or empty
    (gathering skips what it cannot use; prolong.data.text_files does the reading)."""
    try:
        text = read_text_file(path, binary_ok=True)
    except (OSError, UserError):  # unreadable, or a broken .gz
        return None
    return text if text is not None and text.strip() else None


def _repo_files(directory: Path) -> Iterator[tuple[str, str]]:
    for path in sorted(directory.rglob("*")):
        wanted = path.suffix in CODE_SUFFIXES and "__pycache__" not in path.parts and path.is_file()
        if wanted and path.stat().st_size <= MAX_FILE_BYTES and (text := _read(path)) is not None:
            yield path.relative_to(directory.parent).as_posix(), text


_ROFF_FONT = re.compile(r"\\f[BIRP]|\\f\(..|\\\*\(..|\\&|\\e|\\s[-+]?\d|\\\||\\\^")


_TEXT_MACROS = {"SH", "SS", "B", "I", "BI", "BR", "IB", "IR", "RB", "RI", "IP", "Sh", "Nm", "Nd", "Ar", "Fl"}


def _man_to_text(source: str) -> str:
    """Rough roff -> text: from the first section heading on, keep body text and text-macro arguments."""
    lines = []
    started = False
    for line in source.splitlines():
        if line.startswith("'"):
            continue  # roff control line
        if line.startswith("."):
            parts = line[1:].split(None, 1)
            name = parts[0] if parts else ""
            started = started or name in ("SH", "Sh")
            line = parts[1].replace('"', "") if name in _TEXT_MACROS and len(parts) > 1 else ""
        if not started:
            continue  # skip the preamble of macro definitions
        line = _ROFF_FONT.sub("", line).replace("\\-", "-").replace("\\(em", "--")
        lines.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _prose() -> Iterator[tuple[str, str]]:
    """(source, text): English man pages, package docs, licenses; docstrings last (always present)."""
    man = Path("/usr/share/man")
    for section in sorted(man.glob("man[1-9]")) if man.is_dir() else []:
        for page in sorted(section.iterdir()):
            if (text := _read(page)) is not None and not text.startswith(".so "):
                yield f"man/{section.name}/{page.name}", _man_to_text(text)
    for root in (Path("/usr/share/common-licenses"), Path("/usr/share/doc")):
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                name = path.name.lower()
                wanted = name in {"copyright", "readme", "readme.md", "readme.txt"} or path.suffix in {
                    ".md",
                    ".txt",
                }
                wanted = wanted or root.name == "common-licenses"
                if (
                    wanted
                    and path.is_file()
                    and path.stat().st_size <= MAX_FILE_BYTES
                    and (text := _read(path))
                ):
                    yield path.as_posix(), text
    for _repo, directory in _package_dirs():
        for name, text in _repo_files(directory):
            if name.endswith(".py") and (doc := _module_docstring(text)) and len(doc) > 200:
                yield f"docstring/{name}", doc


def _module_docstring(text: str) -> str | None:
    try:
        return ast.get_docstring(ast.parse(text))
    except (SyntaxError, ValueError, RecursionError):
        return None


def _conversations(path: str, text: str) -> Iterator[list[dict[str, str]]]:
    """Instruction conversations answerable from one source file."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError):
        return
    head = "\n".join(text.splitlines()[:12])
    module_doc = ast.get_docstring(tree)
    if module_doc:
        summary = module_doc.strip().split("\n\n")[0]
        yield [
            {"role": "user", "content": f"Summarize the first lines of file {path}:\n\n{head}"},
            {"role": "assistant", "content": summary},
        ]
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and (doc := ast.get_docstring(node)):
            what = "function" if isinstance(node, ast.FunctionDef) else "class"
            yield [
                {"role": "system", "content": "You are a helpful programming assistant."},
                {"role": "user", "content": f"What does the {what} `{node.name}` in {path} do?"},
                {"role": "assistant", "content": doc.strip()},
            ]


class _Budgeted:
    """A JSONL file that stops accepting rows once it holds `limit` bytes."""

    def __init__(self, path: Path, limit: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115  (closed by build_local_corpus)
        self.limit = limit
        self.size = 0
        self.rows = 0

    @property
    def full(self) -> bool:
        return self.size >= self.limit

    def write(self, row: Mapping[str, object]) -> None:
        line = json.dumps(row, ensure_ascii=False) + "\n"
        self.file.write(line)
        self.size += len(line.encode())
        self.rows += 1


def build_local_corpus(out_dir: str | Path, max_bytes: int = 24 << 20) -> dict[str, dict[str, int]]:
    """Write the local corpus (at most about `max_bytes`) into `out_dir`; returns rows and bytes per part."""
    out = Path(out_dir)
    files = {
        name: _Budgeted(out / name / f, int(max_bytes * SHARES[name]))
        for name, f in (
            ("code", "repos.jsonl"),
            ("prose", "docs.jsonl"),
            ("short", "short.jsonl"),
            ("sft", "chat.jsonl"),
            ("retrieval", "retrieval.jsonl"),
        )
    }
    code, prose, short, sft = files["code"], files["prose"], files["short"], files["sft"]
    identifiers: Counter[str] = Counter()
    haystack: list[str] = []
    passages: list[str] = []  # code files to copy from
    for repo, directory in _package_dirs():
        if code.full and sft.full:
            break
        repo_bytes = 0
        for path, text in _repo_files(directory):
            if repo_bytes >= MAX_REPO_BYTES:
                break
            if not code.full:
                code.write({"repo": repo, "path": path, "text": text})
                identifiers.update(IDENTIFIER.findall(text[:4096]))
                if len(passages) < HAYSTACK_TEXTS:
                    passages.append(text)
            repo_bytes += len(text)
            if not sft.full and path.endswith(".py"):
                for messages in _conversations(path, text):
                    sft.write({"messages": messages})
    for source, text in _prose():
        if prose.full and short.full:
            break
        if not prose.full:
            prose.write({"source": source, "text": text})
            if len(haystack) < HAYSTACK_TEXTS:
                haystack.append(text)
        if not short.full:
            for paragraph in re.split(r"\n\s*\n", text):
                if len(paragraph) >= 200 and not short.full:
                    short.write({"text": paragraph.strip()})
    words = [word for word, _ in identifiers.most_common(2000)] or ["value"]
    for row in retrieval_documents(haystack, passages, words, seed=0):
        if files["retrieval"].full:
            break
        files["retrieval"].write(row)
    files["passkey"] = _Budgeted(out / "retrieval" / "passkey.jsonl", 1 << 40)  # a row count, not a byte share
    for passkey in itertools.islice(passkey_rows(seed=0), PASSKEY_ROWS):
        files["passkey"].write(passkey)
    for budgeted in files.values():
        budgeted.file.close()
    summary = {name: {"rows": f.rows, "bytes": f.size} for name, f in files.items()}
    (out / "corpus.json").write_text(json.dumps({"python": sys.version.split()[0], **summary}, indent=2))
    return summary
