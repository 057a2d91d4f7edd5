"""Reading the user's text files with errors that name the file and the line: UTF-8 text, JSON Lines."""

from __future__ import annotations

import json
import os
import threading
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


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` by ``text`` (UTF-8) all at once: a crash leaves either the old file or the new one,
    never a torn one (written beside it, flushed to disk, then renamed over it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def refuse_to_replace(out: str | os.PathLike, held: list[str], what: str, overwrite: bool,
                      error: type[Exception] = InputFileError) -> bool:
    """Check an output folder before a command writes into it: ``out`` must not be a file, and when it already
    holds ``held`` (the names of an earlier run's files; ``what`` says what they are, e.g. "a model") the
    command needs ``--overwrite``. Returns whether there is an earlier run to replace."""
    out = Path(out)
    if out.is_file():
        raise error(f"--out {out} is a file, expected a folder")
    if held and not overwrite:
        shown = f" ({', '.join(held)})" if held != ["*"] else ""
        raise error(f"--out {out} already holds {what}{shown}: pass --overwrite to replace it, or choose another --out")
    return bool(held)
