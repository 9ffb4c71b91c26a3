"""Config files and flags into config dataclasses, and back: YAML and `key.sub=value` overrides are
merged, coerced to each field's type (an error names the file, line and field), and every field's
doc becomes `--help` text and docs/config.md (`describe`). The dataclasses themselves are in
config.py; nothing here knows a stage."""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from instructkit.errors import InputError


def _is_optional(tp) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType) and type(None) in get_args(tp)


def _coerce(value: Any, tp: Any, name: str, source: str | None):
    origin = get_origin(tp)
    if _is_optional(tp):
        if value is None:
            return None
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _coerce(value, inner[0], name, source)
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise InputError(f"expected a mapping of {tp.__name__} fields", path=source, field=name)
        return _build(tp, value, name, source)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise InputError(f"expected one of {list(allowed)}, got {value!r}", path=source, field=name)
        return value
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, list):
            raise InputError("expected a list", path=source, field=name)
        return [_coerce(v, inner, f"{name}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        kt, vt = get_args(tp) or (Any, Any)
        if not isinstance(value, dict):
            raise InputError("expected a mapping", path=source, field=name)
        return {_coerce(k, kt, name, source): _coerce(v.for_type(vt) if isinstance(v, _Override) else v, vt,
                                                      f"{name}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise InputError(f"expected true or false, got {value!r}", path=source, field=name)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise InputError(f"expected an integer, got {value!r}", path=source, field=name)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise InputError(f"expected a number, got {value!r}", path=source, field=name)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise InputError(f"expected a string, got {value!r}", path=source, field=name)
    return value


def _build(cls, values: dict, prefix: str, source: str | None):
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    for key in values:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else key
            raise InputError(f"unknown field (known: {', '.join(sorted(names))})", path=source, field=full)
    default = cls()
    kwargs = {}
    for f in fields(cls):
        full = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in values:
            value = values[f.name]
            if isinstance(value, _Override):
                value = value.for_type(hints[f.name])
            if is_dataclass(hints[f.name]) and isinstance(value, dict):
                base = to_dict(getattr(default, f.name))
                merged = deep_merge(base, value)
                kwargs[f.name] = _build(hints[f.name], merged, full, source)
            else:
                kwargs[f.name] = _coerce(value, hints[f.name], full, source)
    return dataclasses.replace(default, **kwargs)


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class _Override(str):
    """A command-line value as typed, with its YAML reading. A string field takes the text verbatim
    (YAML would read `out=2024-01-01` as a date and `model=0755` as octal); other fields the YAML."""

    def __new__(cls, raw: str, parsed: Any):
        self = super().__new__(cls, raw)
        self.parsed = parsed
        return self

    def for_type(self, tp) -> Any:
        verbatim = tp is str or (get_origin(tp) is Literal and all(isinstance(a, str) for a in get_args(tp)))
        return str(self) if verbatim else self.parsed


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=1e-4' -> (['optim', 'lr'], 1e-4). The value is read as YAML (numbers, bools, lists)."""
    if "=" not in text:
        raise InputError(f"expected key=value, got {text!r}", field=text)
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise InputError(f"bad key in {text!r}", field=key)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    if value is None and raw.strip().lower() not in ("null", "~", "none"):
        value = raw
    return key.split("."), value


def load_config(cls, path: str | None = None, overrides: list[str] | tuple = (), values: dict | None = None):
    """Defaults <- `values` or YAML file <- dotted overrides; unknown keys and wrong types are InputErrors."""
    import copy
    values = copy.deepcopy(values) if values is not None else {}
    source = None
    if path:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise InputError("config file does not exist" if not p.exists() else "expected a file", path=source)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise InputError(f"malformed YAML: {getattr(e, 'problem', e)}", path=source,
                             line=mark.line + 1 if mark else None) from None
        except UnicodeDecodeError:
            raise InputError("not valid UTF-8", path=source) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise InputError("expected a mapping at the top level", path=source)
        values = loaded
    if overrides:
        _build(cls, copy.deepcopy(values), "", source)  # a problem in the file names the file
    for text in overrides:
        keys, value = parse_override(text)
        node = values
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise InputError("cannot set a sub-field of a scalar", field=".".join(keys))
        node[keys[-1]] = _Override(text.split("=", 1)[1], value)
    return _build(cls, values, "", "command line" if overrides else source)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def describe(cls, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted name, type, default, doc) for every leaf field, in declaration order."""
    rows = []
    hints = get_type_hints(cls)
    default = cls()
    for f in fields(cls):
        name = f"{prefix}{f.name}"
        tp = hints[f.name]
        if is_dataclass(tp):
            sub = describe(tp, name + ".")
            value = getattr(default, f.name)
            rows.extend((n, t, _get(value, n[len(name) + 1:]), d) for n, t, _, d in sub)
        else:
            rows.append((name, _type_name(tp), getattr(default, f.name), f.metadata.get("doc", "")))
    return rows


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _type_name(tp) -> str:
    if get_origin(tp) is Literal:
        return "|".join(str(a) for a in get_args(tp))
    if get_origin(tp) is list:
        return f"list[{_type_name(get_args(tp)[0])}]"
    if get_origin(tp) is dict:
        return f"dict[{', '.join(_type_name(a) for a in get_args(tp))}]"
    if _is_optional(tp):
        return _type_name([a for a in get_args(tp) if a is not type(None)][0]) + "?"
    return getattr(tp, "__name__", str(tp))


def help_text(cls) -> str:
    lines = [f"{cls.__doc__.strip() if cls.__doc__ else cls.__name__}", "", "fields (set as key=value or in --config YAML):"]
    for name, tp, default, doc in describe(cls):
        lines.append(f"  {name} ({tp}, default {default!r})")
        lines.append(f"      {doc}")
    return "\n".join(lines)
