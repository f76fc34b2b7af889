"""The one reader of text inputs: JSONL (.jsonl, .jsonl.gz, .jsonl.zst) and text files, plain or compressed.

Every text input of prolong goes through here (data sources, tokenizer training inputs, perplexity
documents, HELMET files, the local corpus), so bad input gets one behaviour everywhere:

- A UTF-8 byte-order mark at the start of a file is accepted and dropped (other tools write one).
- Invalid UTF-8 is an error naming the file, the line and the column (JSON text is UTF-8 by definition;
  a bad byte means a corrupted or mis-encoded file, and replacing it would train on U+FFFD). Directory
  trees are the one exception: `read_text_file(..., binary_ok=True)` returns None for a file that is not
  UTF-8 text (an image in a code repository), and the caller counts it.
- Malformed JSON, or a line that is not a JSON object, is an error naming the file and line.
- A truncated or corrupt .gz/.zst stream, or a file whose name says .gz/.zst but is not, is an error
  naming the file, the last line read and the compressed byte offset.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from prolong.errors import UserError

BOM = b"\xef\xbb\xbf"
PROGRESS_EVERY_LINES = 256  # how often jsonl_records reports bytes read (a tell() per line is slow)
_READ_BYTES = 1 << 20


class _ZstdStream(io.RawIOBase):
    """Decompressed bytes of a zstd file (one or more frames) that notices a truncated last frame.

    zstandard's stream_reader ends quietly when the input stops inside a frame, so a cut download
    would read as a shorter corpus; a decompressobj tells whether the frame ended (`eof`).
    """

    def __init__(self, raw: BinaryIO) -> None:
        import zstandard

        self._zstd = zstandard
        self._raw = raw
        self._frame = zstandard.ZstdDecompressor().decompressobj()
        self._in_frame = False  # input seen since the last finished frame
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = self._raw.read(_READ_BYTES)
            if not chunk:
                if self._in_frame:
                    raise EOFError("the zstd stream ends inside a frame (the file is truncated)")
                return 0
            self._pending = self._decompress(chunk)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def _decompress(self, chunk: bytes) -> bytes:
        out = []
        while chunk:
            self._in_frame = True
            out.append(self._frame.decompress(chunk))
            if not self._frame.eof:
                break
            chunk = self._frame.unused_data  # the next frame, if the file has several
            self._frame = self._zstd.ZstdDecompressor().decompressobj()
            self._in_frame = False
        return b"".join(out)


def open_decompressed(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """(decompressed stream, raw file) for .gz/.zst/plain files; the raw file's position tracks progress.

    The caller closes both. Decompression errors surface while reading; `jsonl_records` and
    `read_text_file` turn them into located errors.
    """
    raw = open(path, "rb")  # noqa: SIM115  (the caller closes both streams)
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw), raw  # type: ignore[return-value]
    if name.endswith((".zst", ".zstd")):
        return io.BufferedReader(_ZstdStream(raw), _READ_BYTES), raw
    return raw, raw


def _is_decompression_error(error: BaseException) -> bool:
    if isinstance(error, EOFError | zlib.error | gzip.BadGzipFile):
        return True
    return type(error).__name__ == "ZstdError"  # zstandard's, without importing it for plain files


def _decompression_error(path: Path, error: BaseException, raw: BinaryIO, lines: int | None) -> UserError:
    kind = "gzip" if path.name.lower().endswith(".gz") else "zstd"
    where = [f"after line {lines}"] if lines is not None else []
    with contextlib.suppress(OSError, ValueError):  # a closed or unseekable stream has no position
        where.append(f"at compressed byte {raw.tell():,}")
    return UserError(
        f"{path}: not a complete {kind} file ({', '.join(where)}: {error}); it is truncated, corrupt or "
        f"not {kind}-compressed: download or compress it again, or rename it"
    )


def decode_utf8(data: bytes, path: str | Path, first_line: int = 1) -> str:
    """`data` as text, a leading byte-order mark dropped; invalid UTF-8 is a UserError naming the file,
    the line (`data` starts at line `first_line` of `path`) and the column."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = first_line + data.count(b"\n", 0, error.start)
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        bad = data[error.start : error.start + 1].hex()
        raise UserError(
            f"{path}:{line}: invalid UTF-8 (byte 0x{bad} at column {column}); prolong reads UTF-8 text "
            "only: convert the file (e.g. iconv -f latin1 -t utf-8) or fix the bytes"
        ) from None


def jsonl_records(
    path: Path, progress: Callable[[int], None] | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, object) for each non-blank line of a JSONL file (.jsonl, .jsonl.gz, .jsonl.zst).

    `where` is "path:line". `progress(raw_bytes_read)` is called every few hundred lines and at the end.
    Errors (see the module docstring) are UserErrors naming the file and line.
    """
    stream, raw = open_decompressed(path)
    line_no = 0
    with stream, raw:
        lines = iter(stream)
        while True:
            try:
                line = next(lines)
            except StopIteration:
                break
            except Exception as error:
                if _is_decompression_error(error):
                    raise _decompression_error(path, error, raw, line_no) from None
                raise
            line_no += 1
            if progress is not None and line_no % PROGRESS_EVERY_LINES == 0:
                progress(raw.tell())
            if line_no == 1 and line.startswith(BOM):
                line = line[len(BOM) :]
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                text = decode_utf8(line, path, line_no)  # raises, naming line and column
            try:
                fields = json.loads(text)
            except json.JSONDecodeError as error:
                reason = error.msg.removesuffix(" at")  # "Unterminated string starting at"
                raise UserError(f"{where}: malformed JSON ({reason} at column {error.colno})") from None
            if not isinstance(fields, dict):
                raise UserError(f"{where}: expected a JSON object, got {type(fields).__name__}")
            yield where, fields
        if progress is not None:
            progress(raw.tell())


def read_text_file(path: Path, binary_ok: bool = False) -> str | None:
    """The whole text of a file (.gz/.zst decompressed), a leading byte-order mark dropped.

    A file that is not UTF-8 text is an error naming its line and column; with `binary_ok` (trees of
    files such as code repositories) it returns None instead, as it does for a file with a NUL byte
    (a binary file that happens to decode).
    """
    stream, raw = open_decompressed(path)
    with stream, raw:
        try:
            data = stream.read()
        except Exception as error:
            if _is_decompression_error(error):
                raise _decompression_error(path, error, raw, None) from None
            raise
    if binary_ok:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            return None
        return None if "\x00" in text else text
    return decode_utf8(data, path)
