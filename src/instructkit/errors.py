"""User-facing errors. Anything the user can fix (bad file, bad field, bad flag) is an InputError:
the CLI prints one line naming file, line and field, and exits with code 2 — never a traceback."""
from __future__ import annotations

EXIT_INPUT = 2


class AlreadyComplete(Exception):
    """The output directory already holds a finished run of this stage (not an error: exit 0)."""


class InputError(Exception):
    """A problem with what the user gave us: a file, a record, a config value."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        super().__init__(self.format())

    def format(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path + (f":{self.line}" if self.line is not None else "")
        parts = [p for p in (where, f"field '{self.field}'" if self.field else "") if p]
        prefix = ": ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message
