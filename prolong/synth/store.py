"""Resumable output: the examples JSONL plus a journal of finished work items.

For each finished item its examples are appended to the output, flushed and synced, then one journal
line records the item (ok or malformed). On opening, a journal line cut short by a crash is dropped,
and output lines of items the journal does not record (written just before a crash) are removed, so
a finished item is never generated twice and an unfinished one never leaves half its examples.
The journal's first line fingerprints the settings that decide items' contents; resuming with other
settings is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prolong.errors import UserError
from prolong.publish import atomic_file

JOURNAL_VERSION = 1


def journal_path(output: str | Path) -> Path:
    """The journal beside an output file: <output>.journal."""
    output = Path(output)
    return output.with_name(output.name + ".journal")


def _read_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(parsed JSON objects, byte length of the complete lines): a torn last line is left out."""
    records, good = [], 0
    with open(path, "rb") as file:
        for line in file:
            if not line.endswith(b"\n"):
                break
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good += len(line)
    return records, good


class SynthStore:
    """Appends finished items to the output and journal; knows which items are done."""

    def __init__(self, output: str | Path, fingerprint: dict[str, Any]) -> None:
        self.output = Path(output)
        self.journal = journal_path(self.output)
        self.done: dict[str, dict[str, Any]] = {}  # item -> its journal record
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if self.journal.exists():
            self._recover(fingerprint)
        elif self.output.exists() and self.output.stat().st_size:
            raise UserError(
                f"{self.output} exists but has no journal ({self.journal.name}), so its items are unknown; "
                "move it away or set synth.output to a new file"
            )
        else:
            header = {"version": JOURNAL_VERSION, "fingerprint": fingerprint}
            self.journal.write_text(json.dumps(header) + "\n", encoding="utf-8")
            self.output.write_bytes(b"")
        # Held open for the whole run (one append per item); closed by close().
        self._out = open(self.output, "ab")  # noqa: SIM115
        self._log = open(self.journal, "ab")  # noqa: SIM115

    def _recover(self, fingerprint: dict[str, Any]) -> None:
        records, good = _read_lines(self.journal)
        if not records or records[0].get("fingerprint") is None:
            raise UserError(f"{self.journal}: not a synth journal; move it and {self.output.name} away")
        before = records[0]["fingerprint"]
        if before != fingerprint:
            keys = sorted(k for k in set(before) | set(fingerprint) if before.get(k) != fingerprint.get(k))
            raise UserError(
                f"{self.output} was generated with other synth settings (changed: {keys}); resuming "
                "would mix two datasets. Set synth.output to a new file, or restore the settings."
            )
        os.truncate(self.journal, good)
        self.done = {r["item"]: r for r in records[1:]}
        kept: list[dict[str, Any]] = []
        changed = False
        if self.output.exists():
            examples, good_out = _read_lines(self.output)
            changed = good_out != self.output.stat().st_size
            for example in examples:
                if example.get("item") in self.done:
                    kept.append(example)
                else:
                    changed = True
        else:
            changed = True
        if changed:  # rewrite without the torn/unrecorded lines, atomically
            with atomic_file(self.output, "wb") as file:
                file.writelines(_encode(e) for e in kept)

    def commit(self, item: str, examples: list[dict[str, Any]], status: str, **info: Any) -> None:
        """Record a finished item: its examples first, then its journal line (each synced)."""
        if examples:
            self._out.write(b"".join(_encode(e) for e in examples))
            self._out.flush()
            os.fsync(self._out.fileno())
        record = {"item": item, "status": status, "examples": len(examples), **info}
        self._log.write(_encode(record))
        self._log.flush()
        os.fsync(self._log.fileno())
        self.done[item] = record

    def close(self) -> None:
        """Close the files (everything committed is already on disk)."""
        self._out.close()
        self._log.close()


def _encode(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
