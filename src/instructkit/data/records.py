"""The record types of ARCHITECTURE.md's data contract, with validation.

Each `parse_*` takes a decoded JSON object plus its file and line, and either returns a typed
record or raises InputError naming the file, line and field. Field names follow TRL's where TRL
has one. Unknown extra fields are kept in `meta` (sandbox task ids, labeler names, ...)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from instructkit.errors import InputError

ROLES = ("system", "user", "assistant")


def _err(msg, path, line, fld):
    return InputError(msg, path=path, line=line, field=fld)


def _str(obj, key, path, line, *, allow_empty=False) -> str:
    if key not in obj:
        raise _err("missing required field", path, line, key)
    v = obj[key]
    if not isinstance(v, str):
        raise _err(f"expected a string, got {type(v).__name__}", path, line, key)
    if not allow_empty and not v.strip():
        raise _err("must not be empty", path, line, key)
    return v


def _str_list(obj, key, path, line, *, min_len=1) -> list[str]:
    if key not in obj:
        raise _err("missing required field", path, line, key)
    v = obj[key]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise _err("expected a list of strings", path, line, key)
    if len(v) < min_len:
        raise _err(f"expected at least {min_len} items, got {len(v)}", path, line, key)
    return v


def _extra(obj, known) -> dict:
    return {k: v for k, v in obj.items() if k not in known}


def _messages(obj, path, line) -> list[dict]:
    msgs = obj["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise _err("expected a non-empty list of {role, content} objects", path, line, "messages")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise _err(f"item {i}: expected {{\"role\": one of {list(ROLES)}, \"content\": string}}",
                       path, line, "messages")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


@dataclass
class Demonstration:
    """A labeler-written demonstration: `prompt` -> `completion` (or a chat transcript)."""
    prompt: str
    completion: str
    messages: list[dict] | None = None
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        base = {"messages": self.messages} if self.messages is not None else {
            "prompt": self.prompt, "completion": self.completion}
        return {**base, **self.meta}


def parse_demonstration(obj: dict, path: str, line: int) -> Demonstration:
    if "messages" in obj:
        msgs = _messages(obj, path, line)
        if msgs[-1]["role"] != "assistant":
            raise _err("the last message must be the assistant's (the demonstration)", path, line,
                       "messages")
        return Demonstration(prompt="", completion=msgs[-1]["content"], messages=msgs,
                             meta=_extra(obj, {"messages"}))
    if "prompt" not in obj and "completion" not in obj:
        raise _err("expected {\"prompt\", \"completion\"} or {\"messages\"}", path, line, "prompt")
    return Demonstration(_str(obj, "prompt", path, line, allow_empty=True),
                         _str(obj, "completion", path, line), meta=_extra(obj, {"prompt", "completion"}))


@dataclass
class Ranking:
    """K completions of one prompt, ranked (1 = best, equal ints = tie). The InstructGPT label."""
    prompt: str
    completions: list[str]
    ranks: list[int]
    labeler: str | None = None
    likert: list[int] | None = None
    flags: list[dict] | None = None
    not_rankable: bool = False
    meta: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return len(self.completions)

    def pairs(self) -> list[tuple[int, int]]:
        """(winner index, loser index) for every strictly ordered pair; ties dropped."""
        return [(i, j) for i in range(self.k) for j in range(self.k) if self.ranks[i] < self.ranks[j]]

    def to_json(self) -> dict:
        out: dict[str, Any] = {"prompt": self.prompt, "completions": self.completions, "ranks": self.ranks}
        for key in ("labeler", "likert", "flags"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.not_rankable:
            out["not_rankable"] = True
        return {**out, **self.meta}


RANKING_FIELDS = {"prompt", "completions", "ranks", "labeler", "likert", "flags", "not_rankable"}


def parse_ranking(obj: dict, path: str, line: int) -> Ranking:
    """Accepts rankings, pairs (K = 2) and ratings (scores turned into ranks)."""
    if "chosen" in obj or "rejected" in obj:
        return parse_pair(obj, path, line)
    if "scores" in obj and "ranks" not in obj:
        return parse_rating(obj, path, line)
    prompt = _str(obj, "prompt", path, line, allow_empty=True)
    completions = _str_list(obj, "completions", path, line, min_len=2)
    not_rankable = obj.get("not_rankable", False)
    if not isinstance(not_rankable, bool):
        raise _err("expected true or false", path, line, "not_rankable")
    ranks = obj.get("ranks")
    if ranks is None and not not_rankable:
        raise _err("missing required field", path, line, "ranks")
    if ranks is None:
        ranks = [1] * len(completions)
    if (not isinstance(ranks, list) or len(ranks) != len(completions)
            or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in ranks)):
        raise _err(f"expected {len(completions)} integers >= 1 (one per completion, 1 = best)", path,
                   line, "ranks")
    likert = obj.get("likert")
    if likert is not None and (not isinstance(likert, list) or len(likert) != len(completions) or not all(
            isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 7 for s in likert)):
        raise _err(f"expected {len(completions)} integers from 1 to 7", path, line, "likert")
    flags = obj.get("flags")
    if flags is not None and (not isinstance(flags, list) or len(flags) != len(completions)
                              or not all(isinstance(f, dict) for f in flags)):
        raise _err(f"expected {len(completions)} objects (one per completion)", path, line, "flags")
    labeler = obj.get("labeler")
    if labeler is not None and not isinstance(labeler, str):
        raise _err("expected a string", path, line, "labeler")
    return Ranking(prompt, completions, ranks, labeler, likert, flags, not_rankable,
                   meta=_extra(obj, RANKING_FIELDS))


def parse_pair(obj: dict, path: str, line: int) -> Ranking:
    """A TRL-style pair {"prompt", "chosen", "rejected"} is a ranking with K = 2."""
    chosen = _str(obj, "chosen", path, line, allow_empty=True)
    rejected = _str(obj, "rejected", path, line, allow_empty=True)
    prompt = obj.get("prompt")
    if prompt is None:
        raise _err("missing required field (for HH-RLHF transcripts use `instructkit import hh`)",
                   path, line, "prompt")
    prompt = _str(obj, "prompt", path, line, allow_empty=True)
    return Ranking(prompt, [chosen, rejected], [1, 2], meta=_extra(obj, {"prompt", "chosen", "rejected"}))


def parse_rating(obj: dict, path: str, line: int) -> Ranking:
    """{"prompt", "completions", "scores"}: higher score = better; equal scores tie."""
    prompt = _str(obj, "prompt", path, line, allow_empty=True)
    completions = _str_list(obj, "completions", path, line, min_len=2)
    scores = obj.get("scores")
    if (not isinstance(scores, list) or len(scores) != len(completions)
            or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores)):
        raise _err(f"expected {len(completions)} finite numbers (one per completion)", path, line, "scores")
    return Ranking(prompt, completions, scores_to_ranks(scores),
                   meta=_extra(obj, {"prompt", "completions", "scores"}))


def scores_to_ranks(scores: list[float]) -> list[int]:
    """Dense ranks, 1 = highest score, equal scores share a rank: [0.2, 0.9, 0.2] -> [2, 1, 2]."""
    distinct = sorted(set(scores), reverse=True)
    return [distinct.index(s) + 1 for s in scores]


@dataclass
class Unpaired:
    """KTO's label: one completion judged desirable (True) or not (False)."""
    prompt: str
    completion: str
    label: bool
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "completion": self.completion, "label": self.label, **self.meta}


def parse_unpaired(obj: dict, path: str, line: int) -> Unpaired:
    label = obj.get("label")
    if not isinstance(label, bool):
        raise _err("expected true or false", path, line, "label")
    return Unpaired(_str(obj, "prompt", path, line, allow_empty=True), _str(obj, "completion", path, line),
                    label, meta=_extra(obj, {"prompt", "completion", "label"}))


@dataclass
class Prompt:
    prompt: str
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"prompt": self.prompt, **self.meta}


def parse_prompt(obj: dict, path: str, line: int) -> Prompt:
    return Prompt(_str(obj, "prompt", path, line), meta=_extra(obj, {"prompt"}))


@dataclass
class Text:
    text: str

    def to_json(self) -> dict:
        return {"text": self.text}


def parse_text(obj: dict, path: str, line: int) -> Text:
    return Text(_str(obj, "text", path, line))


PARSERS = {
    "demonstration": parse_demonstration,
    "ranking": parse_ranking,
    "pair": parse_pair,
    "rating": parse_rating,
    "unpaired": parse_unpaired,
    "prompt": parse_prompt,
    "text": parse_text,
}
