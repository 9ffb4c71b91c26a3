"""docs/config.md, generated from the config dataclasses of every command in `instructkit.cli.COMMANDS`.

    python -m instructkit.docs_gen            # rewrite docs/config.md
    python -m instructkit.docs_gen --check    # exit 1 if docs/config.md is stale

The output depends only on the code (no dates, no paths, no dict-order accidents), so regenerating
an unchanged tree is a no-op and tests/test_docs.py can fail when the committed file is stale."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

REGENERATE = "python -m instructkit.docs_gen"


def default_path() -> Path:
    """docs/config.md of the source tree this package runs from (editable install), else of the cwd."""
    root = Path(__file__).resolve().parents[2]
    return (root if (root / "pyproject.toml").exists() else Path.cwd()) / "docs" / "config.md"


def _fmt(value: Any) -> str:
    """A default as you would type it in YAML or on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '""' if value == "" else value
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _doc(cls) -> str:
    """The class docstring, or '' for the one `dataclass` writes itself."""
    doc = (cls.__doc__ or "").strip()
    return "" if doc.startswith(f"{cls.__name__}(") else " ".join(doc.split())


def _sections(cls, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted name, docstring) of every nested config group that documents itself."""
    out = []
    hints = get_type_hints(cls)
    for f in fields(cls):
        tp = hints[f.name]
        if is_dataclass(tp):
            name = f"{prefix}{f.name}"
            if _doc(tp):
                out.append((name, _doc(tp)))
            out.extend(_sections(tp, name + "."))
    return out


def render() -> str:
    from instructkit.cli import COMMANDS, DELEGATED
    from instructkit.config import describe

    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated from the config dataclasses by `{REGENERATE}`; do not edit by hand. -->",
        "",
        "Every command takes one config dataclass. The same fields are the Python API, the YAML schema",
        "and the command-line flags; later sources override earlier ones:",
        "",
        "1. the defaults below (the paper's, where it has one);",
        "2. a YAML file: `--config FILE.yaml`, nested mappings for dotted names (`optim: {lr: 1e-4}`);",
        "3. dotted overrides `key.sub=value` or flags `--key.sub value` / `--key.sub=value` (a bare",
        "   `--flag` means `flag=true`; `-` in a flag name reads as `_`). Values are read as YAML",
        "   (numbers, `true`/`false`, lists), except that string fields take the text exactly as typed.",
        "",
        "An unknown field or a value of the wrong type stops the command with exit code 2 and a message",
        "naming the field (and the file, for YAML). `instructkit <command> --help` prints the same table.",
        "The resolved config is saved in each output directory's `instructkit.json` under `config`.",
        "",
        "Commands: " + ", ".join(f"[`{name}`](#instructkit-{name.replace(' ', '-')})" for name in COMMANDS) + ".",
        "",
    ]
    for name, (cls, _module, positional, summary) in COMMANDS.items():
        pos = "".join(f" {p.upper()}" for p in positional)
        lines += [f"## instructkit {name}", "", f"{summary[0].upper()}{summary[1:]}.", "",
                  f"    instructkit {name}{pos} [--config FILE.yaml] [key=value ...]", ""]
        if positional:
            lines += ["Positional: " + ", ".join(f"`{p.upper()}` sets `{p}`" for p in positional) + ".", ""]
        if _doc(cls):
            lines += [_doc(cls), ""]
        lines += ["| field | type | default | description |", "|---|---|---|---|"]
        for field_name, tp, default, doc in describe(cls):
            lines.append(f"| `{field_name}` | {_cell(tp)} | `{_cell(_fmt(default))}` | {_cell(doc)} |")
        sections = _sections(cls)
        if sections:
            lines += [""] + [f"- `{n}`: {_cell(d)}" for n, d in sections]
        lines.append("")
    if DELEGATED:
        lines += ["## Commands with their own arguments", "",
                  "These parse their own arguments; `instructkit <command> --help` describes them.", ""]
        lines += [f"- `instructkit {name}`: {summary}" for name, (_module, summary) in DELEGATED.items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m instructkit.docs_gen", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="where to write (default: the tree's docs/config.md)")
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if the file is stale")
    args = ap.parse_args(argv)
    path = args.out or default_path()
    text = render()
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            print(f"{path} is stale; regenerate it with: {REGENERATE}", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
