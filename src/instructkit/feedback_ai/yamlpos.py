"""YAML with line numbers: every mapping remembers the line of each of its keys, every list the line
of each item, so that a mistake in a spec or a constitution is reported as `file:line: field 'key'`.

    doc = load_yaml("spec.yaml")        # plain dicts / lists / scalars (subclasses that carry lines)
    doc.line_of("workflows")            # 1-based line of that key (the mapping's own line if absent)
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from instructkit.errors import InputError


class YDict(dict):
    """A YAML mapping: `line` is where it starts, `key_lines[k]` where key k is written."""
    line: int | None = None
    key_lines: dict

    def line_of(self, key) -> int | None:
        return self.key_lines.get(key, self.line) if hasattr(self, "key_lines") else self.line


class YList(list):
    """A YAML sequence: `line` is where it starts, `item_lines[i]` where item i is written."""
    line: int | None = None
    item_lines: list

    def line_of(self, i: int) -> int | None:
        lines = getattr(self, "item_lines", [])
        return lines[i] if 0 <= i < len(lines) else self.line


def line_of(obj, key=None) -> int | None:
    """The line of `obj[key]` (or of obj itself) when obj came from `load_yaml`; else None."""
    if key is not None and isinstance(obj, (YDict, YList)):
        return obj.line_of(key)
    return getattr(obj, "line", None)


class _Loader(yaml.SafeLoader):
    path = "<yaml>"


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> YDict:
    loader.flatten_mapping(node)  # merge keys (<<: *anchor)
    out = YDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) or key is None:
            raise InputError("mapping keys must be plain scalars", path=loader.path, line=key_node.start_mark.line + 1)
        if key in out:
            raise InputError(f"duplicate key (first on line {out.key_lines[key]})", path=loader.path,
                             line=key_node.start_mark.line + 1, field=str(key))
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> YList:
    out = YList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(path: str | os.PathLike, what: str = "YAML file"):
    """Parse one YAML document; syntax errors become InputError with the line of the problem."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} does not exist" if not p.exists() else f"expected a {what}, found a directory",
                         path=str(p))
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"not valid UTF-8 (byte {e.start})", path=str(p)) from None
    loader = _Loader(text)
    loader.path = str(p)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = " ".join(x for x in (e.context, e.problem) if x)
        raise InputError(f"invalid YAML: {msg}", path=str(p), line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as e:
        raise InputError(f"invalid YAML: {e}", path=str(p)) from None
    finally:
        loader.dispose()
