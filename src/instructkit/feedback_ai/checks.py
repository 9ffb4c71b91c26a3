"""Assertions on one response: pure functions from (response, example) to (passed, reason).

Each assertion key of a spec check compiles (once, when the spec loads, so that a bad regex or JSON
Schema is reported with its line) into a function `(response, example) -> (ok, reason)`, where
`ok` is True, False, or None when the assertion does not apply to this example (equals_reference
on a prompt that has no reference). `reason` says why it failed, for the report.

    contains / contains_any / not_contains   substrings (a string or a list)
    regex / not_regex                         Python `re.search`
    starts_with                               one of a list of prefixes (after leading whitespace)
    min_words / max_words                     words = whitespace-separated tokens with a letter or digit
    min_sentences / max_sentences             sentences end at . ! ? followed by space or the end
    valid_json / json_schema                  the whole response parses as JSON (and matches the schema)
    must_refuse / must_not_refuse             the refusal detector (`Refusals`)
    equals / equals_reference                 whitespace-normalised equality
    python                                    "module:function" or {function: ..., args: {...}}
"""
from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

Result = tuple["bool | None", str]
Assertion = Callable[[str, "Example"], Result]


@dataclass
class Example:
    """One prompt a workflow applies to: its text, an optional reference answer, the record's other fields."""
    prompt: str
    reference: str | None = None
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------- text measures

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def words(text: str) -> list[str]:
    """Whitespace-separated tokens that hold a letter or a digit (lone punctuation is not a word)."""
    return [w for w in text.split() if any(c.isalnum() for c in w)]


def sentences(text: str) -> list[str]:
    """Sentences: text split after runs of . ! ? that end the text or precede whitespace."""
    parts = re.split(r"(?<=[.!?])(?=\s|$)", text.strip())
    return [p.strip() for p in parts if any(c.isalnum() for c in p)]


def normalize(text: str, ignore_case: bool = False) -> str:
    text = " ".join(text.translate(_APOSTROPHES).split())
    return text.lower() if ignore_case else text


DEFAULT_REFUSAL_PHRASES = (
    "can not help", "cannot help", "can't help", "will not help", "won't help", "unable to help",
    "not able to help", "can't assist", "cannot assist", "can not assist", "won't assist", "will not assist",
    "can not do that", "cannot do that", "can't do that", "i refuse", "i must decline", "i have to decline",
    "i'm sorry, but i", "i am sorry, but i", "i'm sorry , but i", "i am sorry , but i", "not safe",
    "i can't provide", "i cannot provide", "i can not provide", "i won't provide", "i will not provide",
)


class Refusals:
    """The refusal detector: one of its phrases (case-insensitive, whole words, curly apostrophes
    folded) within the first `window` characters of the response. Refusals come first; a phrase
    deep inside a long answer ("...it is not safe to leave the oven on") is not a refusal."""

    def __init__(self, extra: list[str] | tuple[str, ...] = (), window: int = 200):
        self.phrases = tuple(dict.fromkeys(normalize(p, True) for p in (*DEFAULT_REFUSAL_PHRASES, *extra)))
        self.window = window
        self._re = re.compile("|".join(r"(?<![a-z0-9])" + re.escape(p) + r"(?![a-z0-9])" for p in self.phrases))

    def match(self, response: str) -> str | None:
        """The refusal phrase found, or None."""
        m = self._re.search(normalize(response, True)[: self.window])
        return m.group(0) if m else None


# ---------------------------------------------------------------------------- compiling

class SpecValueError(ValueError):
    """A bad value for an assertion; the spec loader adds file, line and key."""


def _strings(value, key: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(s, str) and s for s in items):
        raise SpecValueError(f"'{key}' expects a non-empty string or a list of them")
    return list(items)


def _count(value, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SpecValueError(f"'{key}' expects an integer >= 0")
    return value


def _true(value, key: str) -> None:
    if value is not True:
        raise SpecValueError(f"'{key}' expects `true` (remove the key to turn the assertion off)")


def _short(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def compile_assertion(key: str, value: Any, *, ignore_case: bool, refusals: Refusals,
                      base_dir: Path) -> Assertion:
    """The function for one `key: value` of a check. Raises SpecValueError on a bad value."""
    fold = (lambda s: normalize(s, True)) if ignore_case else (lambda s: s)
    if key in ("contains", "contains_any", "not_contains"):
        needles = _strings(value, key)
        wanted = [fold(n) for n in needles]

        def contains(response: str, ex: Example) -> Result:
            text = fold(response)
            found = [n for n, w in zip(needles, wanted) if w in text]
            if key == "contains":
                missing = [n for n in needles if n not in found]
                return (not missing, f"missing {missing[0]!r}" if missing else "")
            if key == "contains_any":
                return (bool(found), f"none of {needles!r} found" if not found else "")
            return (not found, f"contains {found[0]!r}" if found else "")
        return contains
    if key in ("regex", "not_regex"):
        if not isinstance(value, str) or not value:
            raise SpecValueError(f"'{key}' expects a regular expression (a string)")
        try:
            pattern = re.compile(value, re.IGNORECASE if ignore_case else 0)
        except re.error as e:
            raise SpecValueError(f"bad regular expression {value!r}: {e}") from None
        want = key == "regex"

        def regex(response: str, ex: Example) -> Result:
            hit = pattern.search(response)
            if want:
                return (hit is not None, f"no match for /{value}/")
            return (hit is None, f"matches /{value}/ at {hit.group(0)!r}" if hit else "")
        return regex
    if key == "starts_with":
        prefixes = _strings(value, key)

        def starts_with(response: str, ex: Example) -> Result:
            text = fold(response.lstrip())
            ok = any(text.startswith(fold(p)) for p in prefixes)
            return (ok, f"starts with {_short(response.lstrip(), 20)!r}, not {prefixes[0]!r}"
                    + (f" (or {len(prefixes) - 1} other)" if len(prefixes) > 1 else ""))
        return starts_with
    if key in ("min_words", "max_words", "min_sentences", "max_sentences"):
        limit = _count(value, key)
        measure, unit = (words, "words") if key.endswith("words") else (sentences, "sentences")
        at_most = key.startswith("max")

        def length(response: str, ex: Example) -> Result:
            n = len(measure(response))
            ok = n <= limit if at_most else n >= limit
            return (ok, f"{n} {unit} ({'max' if at_most else 'min'} {limit})")
        return length
    if key == "valid_json":
        _true(value, key)

        def valid_json(response: str, ex: Example) -> Result:
            try:
                json.loads(response)
            except ValueError as e:
                return (False, f"not JSON: {e}")
            return (True, "")
        return valid_json
    if key == "json_schema":
        return _json_schema(value, base_dir)
    if key in ("must_refuse", "must_not_refuse"):
        _true(value, key)
        want = key == "must_refuse"

        def refusal(response: str, ex: Example) -> Result:
            phrase = refusals.match(response)
            if want:
                return (phrase is not None, "no refusal detected")
            return (phrase is None, f"refused ({phrase!r})" if phrase else "")
        return refusal
    if key == "equals":
        if not isinstance(value, str):
            raise SpecValueError("'equals' expects a string")
        target = normalize(value, ignore_case)

        def equals(response: str, ex: Example) -> Result:
            return (normalize(response, ignore_case) == target, f"{_short(response)!r} != {_short(value)!r}")
        return equals
    if key == "equals_reference":
        _true(value, key)

        def equals_reference(response: str, ex: Example) -> Result:
            if ex.reference is None:
                return (None, "no reference for this prompt")
            ok = normalize(response, ignore_case) == normalize(ex.reference, ignore_case)
            return (ok, f"{_short(response)!r} != reference {_short(ex.reference)!r}")
        return equals_reference
    if key == "python":
        return _python(value, base_dir)
    raise SpecValueError(f"unknown assertion '{key}'; expected one of {', '.join(ASSERTIONS)}")


ASSERTIONS = ("contains", "contains_any", "not_contains", "regex", "not_regex", "starts_with", "min_words",
              "max_words", "min_sentences", "max_sentences", "valid_json", "json_schema", "must_refuse",
              "must_not_refuse", "equals", "equals_reference", "python")


def _json_schema(value, base_dir: Path) -> Assertion:
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - a core dependency
        raise SpecValueError("'json_schema' needs the jsonschema package (pip install jsonschema)") from None
    if isinstance(value, str):
        path = Path(value) if Path(value).is_absolute() else base_dir / value
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise SpecValueError(f"cannot read the JSON Schema file {str(path)!r}: {e.strerror}") from None
        except ValueError as e:
            raise SpecValueError(f"the JSON Schema file {str(path)!r} is not JSON: {e}") from None
    if not isinstance(value, (dict, bool)):
        raise SpecValueError("'json_schema' expects a JSON Schema (a mapping) or the path of a .json file")
    schema = json.loads(json.dumps(value))  # plain dicts (no line-carrying subclasses)
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise SpecValueError(f"not a valid JSON Schema: {e.message}") from None
    validator = cls(schema)

    def json_schema(response: str, ex: Example) -> Result:
        try:
            doc = json.loads(response)
        except ValueError as e:
            return (False, f"not JSON: {e}")
        err = jsonschema.exceptions.best_match(validator.iter_errors(doc))
        if err is None:
            return (True, "")
        where = "$" + "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in err.absolute_path)
        return (False, f"schema: {err.message} at {where}")
    return json_schema


def import_callable(target: str, base_dir: Path) -> Callable:
    """`module:function` (or `module:Class.method`), importable from the CWD or the spec's directory."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise SpecValueError(f"expected 'module:function', got {target!r}")
    added = [d for d in (str(base_dir), str(Path.cwd())) if d not in sys.path]
    sys.path[:0] = added
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise SpecValueError(f"cannot import module {module_name!r}: {e}") from None
    finally:
        for d in added:
            sys.path.remove(d)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecValueError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpecValueError(f"{target!r} is not callable")
    return obj


def _python(value, base_dir: Path) -> Assertion:
    """fn(prompt, response, **args) -> bool or (bool, reason); a parameter named `example` receives
    the Example (reference, the prompt record's other fields)."""
    if isinstance(value, str):
        target, args = value, {}
    elif isinstance(value, dict) and isinstance(value.get("function"), str) and set(value) <= {"function", "args"}:
        target, args = value["function"], value.get("args") or {}
        if not isinstance(args, dict):
            raise SpecValueError("'python.args' expects a mapping of keyword arguments")
    else:
        raise SpecValueError("'python' expects 'module:function' or {function: 'module:function', args: {...}}")
    fn = import_callable(target, base_dir)
    try:
        wants_example = "example" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        wants_example = False
    args = json.loads(json.dumps(args))

    def python(response: str, ex: Example) -> Result:
        try:
            out = fn(ex.prompt, response, **args, **({"example": ex} if wants_example else {}))
        except Exception as e:  # a user's check crashing fails the check, with the error as the reason
            return (False, f"{target} raised {type(e).__name__}: {e}")
        if isinstance(out, tuple) and len(out) == 2:
            ok, reason = out
            return (bool(ok), str(reason))
        return (bool(out), f"{target} returned {out!r}")
    return python
