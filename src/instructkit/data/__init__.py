"""Records, JSONL I/O and importers: the data contract of ARCHITECTURE.md."""
from __future__ import annotations

import os
from pathlib import Path

from instructkit.data.jsonl import check_readable_file, iter_json_lines, read_records, write_jsonl
from instructkit.data.records import PARSERS, Text
from instructkit.errors import InputError


def load(path: str | os.PathLike, kind: str) -> list:
    """Read and validate a whole file of one record kind. Plain .txt is pretraining text."""
    if kind == "text" and str(path).endswith(".txt"):
        return read_text_file(path)
    if kind not in PARSERS:
        raise ValueError(f"unknown record kind {kind!r}")
    return read_records(path, PARSERS[kind])


def read_text_file(path: str | os.PathLike) -> list[Text]:
    """Plain text for pretraining: documents separated by blank lines."""
    p = check_readable_file(path, "text file")
    try:
        content = Path(p).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = Path(p).read_bytes()[: e.start].count(b"\n") + 1
        raise InputError(f"not valid UTF-8 (byte {e.start})", path=str(p), line=line) from None
    docs = [d.strip() for d in content.split("\n\n") if d.strip()]
    if not docs:
        raise InputError("file is empty: no text", path=str(p))
    return [Text(d) for d in docs]


__all__ = ["load", "read_text_file", "iter_json_lines", "write_jsonl", "check_readable_file"]
