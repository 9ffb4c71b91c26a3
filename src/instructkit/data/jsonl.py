"""JSONL reading with validation on every line, and atomic writers.

Readers stream: a 10 GB file is never loaded whole. Every problem raises InputError with the file,
the 1-based line number and, where known, the field. Writers write to a temporary file next to the
target and rename it into place, so a crash never leaves half a file behind."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from instructkit.errors import InputError

MAX_LINE_BYTES = 8 * 1024 * 1024  # one record larger than this is refused, not parsed


def check_readable_file(path: str | os.PathLike, what: str = "file") -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} does not exist", path=str(p))
    if p.is_dir():
        raise InputError(f"expected a {what}, found a directory", path=str(p))
    if not os.access(p, os.R_OK):
        raise InputError(f"{what} is not readable", path=str(p))
    return p


def split_paths(value: str | os.PathLike | list | tuple) -> list[str]:
    """One path, a comma-separated string of paths, or a list of them -> a list of paths."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if str(v) != ""]
    return [v for v in str(value).split(",") if v != ""] if value else []


def iter_json_lines(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_number, object) for every non-blank line; every line must be a JSON object."""
    p = check_readable_file(path, "JSONL file")
    n_records = 0
    with open(p, "rb") as f:
        for lineno, raw in enumerate(_bounded_lines(f, p), start=1):
            if not raw.strip():
                continue
            try:
                # a byte-order mark may open the file; the newline is cut so JSON errors get the right column
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise InputError(f"not valid UTF-8 (byte {e.start} of the line)", path=str(p), line=lineno) from None
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise InputError(f"malformed JSON: {e.msg} (column {e.colno})", path=str(p),
                                 line=lineno) from None
            if not isinstance(obj, dict):
                raise InputError(f"expected a JSON object, got {type(obj).__name__}", path=str(p),
                                 line=lineno)
            n_records += 1
            yield lineno, obj
    if n_records == 0:
        raise InputError("file is empty: no records", path=str(p))


def _bounded_lines(f, path: Path) -> Iterator[bytes]:
    lineno = 0
    while True:
        line = f.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        lineno += 1
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            raise InputError(f"line longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB", path=str(path),
                             line=lineno)
        yield line


def read_records(path: str | os.PathLike, parse: Callable[[dict, str, int], Any]) -> list:
    """Read and validate every record with `parse(obj, path, line)`; all or nothing."""
    return [parse(obj, str(path), lineno) for lineno, obj in iter_json_lines(path)]


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w"):
    """Open a temporary file beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> int:
    """Atomically write records (dicts, or objects with `to_json()`); returns the count."""
    n = 0
    with atomic_open(path) as f:
        for r in records:
            obj = r.to_json() if hasattr(r, "to_json") else r
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, default=str)
        f.write("\n")


def append_jsonl(path: str | os.PathLike, obj: dict) -> None:
    """Append one line (metrics logs). Not atomic across lines by design: a log, not a data set."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj, ensure_ascii=False, default=float) + "\n")
