"""Reading the user's text files with errors that name the file and the line: UTF-8 text, JSON Lines."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import InputFileError


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The UTF-8 text of ``path``; a missing file or bytes that are not UTF-8 raise :class:`InputFileError`
    naming the file (and the line of the first bad byte)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{what} not found: {path}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputFileError(f"{path}, line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as "
                             "UTF-8") from e


def numbered_jsonl(path: str | os.PathLike, what: str = "file", keys: tuple[str, ...] = ()) -> list[tuple[int, dict]]:
    """``(line number, object)`` of each non-blank line of a JSON Lines file; a line that is not a JSON
    object, or lacks one of ``keys``, raises :class:`InputFileError` naming the file and the line."""
    rows = []
    for n, line in enumerate(read_text(path, what).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputFileError(f"{path}, line {n}: not valid JSON ({e.msg}, column {e.colno})") from e
        if not isinstance(row, dict):
            raise InputFileError(f"{path}, line {n}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in keys if k not in row]
        if missing:
            raise InputFileError(f"{path}, line {n}: no {', '.join(repr(k) for k in missing)} field")
        rows.append((n, row))
    return rows


def read_jsonl(path: str | os.PathLike, what: str = "file", keys: tuple[str, ...] = ()) -> list[dict]:
    """The objects of :func:`numbered_jsonl`."""
    return [row for _, row in numbered_jsonl(path, what, keys)]
