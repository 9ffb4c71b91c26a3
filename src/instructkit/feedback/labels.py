"""What a label is: InstructGPT's Table 3 flags, and validation of the three kinds of submission.

Pages and the JSON API both end here, so a browser, a script and a simulated labeler are held to
the same rules, and a refused submission says which field is wrong and what was expected."""
from __future__ import annotations

import re

# InstructGPT Table 3: the metadata labelers record for every output (key -> question shown)
TABLE3_FLAGS = {
    "fails_instruction": "Fails to follow the correct instruction / task",
    "inappropriate": "Inappropriate for a customer assistant",
    "hallucination": "Hallucination (makes up facts)",
    "constraint_satisfied": "Satisfies the constraint given in the instruction",
    "sexual": "Contains sexual content",
    "violent": "Contains violent content",
    "encourages_violence": "Encourages or fails to discourage violence / abuse / terrorism / self-harm",
    "denigrates_protected_class": "Denigrates a protected class",
    "harmful_advice": "Gives harmful advice",
    "expresses_opinion": "Expresses an opinion",
    "moral_judgment": "Expresses a moral judgment",
}
# keyboard shortcut of each flag on the ranking page (digits are Likert scores, j/k/n/r/e/s/q are taken)
FLAG_KEYS = {"fails_instruction": "f", "inappropriate": "i", "hallucination": "h", "constraint_satisfied": "c",
             "sexual": "x", "violent": "v", "encourages_violence": "g", "denigrates_protected_class": "d",
             "harmful_advice": "a", "expresses_opinion": "o", "moral_judgment": "m"}
SPARE_KEYS = "blpuyz"  # for a project's own extra flags, in order (w, q, t, n, r, e, j, k are taken)
FLAG_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

KINDS = ("demonstration", "ranking", "comparison")
CHOICES = ("A", "B", "tie")
MAX_TEXT = 20_000   # characters of one demonstration
MIN_K, MAX_K = 2, 9


class LabelError(ValueError):
    """A submission that cannot be stored; `field` names the part that is wrong."""

    def __init__(self, message: str, field: str | None = None):
        self.message, self.field = message, field
        super().__init__(f"field '{field}': {message}" if field else message)


def flag_keys(flags: list[str]) -> dict[str, str]:
    """Shortcut letter per flag of a project (Table 3 letters; spare letters for extra flags)."""
    spare = iter(SPARE_KEYS)
    return {f: FLAG_KEYS.get(f) or next(spare, "") for f in flags}


def check_flag_names(flags) -> list[str]:
    if not isinstance(flags, list) or not all(isinstance(f, str) and FLAG_NAME.match(f) for f in flags):
        raise LabelError("expected a list of flag names (lower case letters, digits, _; at most 40)", "flags")
    if len(set(flags)) != len(flags) or len(flags) > len(FLAG_KEYS) + len(SPARE_KEYS):
        raise LabelError(f"expected at most {len(FLAG_KEYS) + len(SPARE_KEYS)} distinct flags", "flags")
    return list(flags)


def dense_ranks(ranks: list[int]) -> list[int]:
    """[1, 3, 3, 7] -> [1, 2, 2, 3]: only the order matters, ties kept."""
    distinct = sorted(set(ranks))
    return [distinct.index(r) + 1 for r in ranks]


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def validate_demonstration(body: dict) -> dict:
    text = body.get("completion")
    if not isinstance(text, str):
        raise LabelError("expected the demonstration text (a string)", "completion")
    text = text.replace("\r\n", "\n").strip()
    if not text:
        raise LabelError("must not be empty: write the response you would want", "completion")
    if len(text) > MAX_TEXT:
        raise LabelError(f"is {len(text)} characters; at most {MAX_TEXT}", "completion")
    return {"completion": text}


def validate_ranking(body: dict, k: int, flags: list[str], require_likert: bool) -> dict:
    """-> {"ranks", "likert", "flags", "not_rankable"}; ranks made dense, 1 = best, ties allowed."""
    not_rankable = body.get("not_rankable", False)
    if not isinstance(not_rankable, bool):
        raise LabelError("expected true or false", "not_rankable")
    ranks = body.get("ranks")
    if ranks is None and not not_rankable:
        raise LabelError(f"expected {k} ranks (1 = best, equal numbers = tie), or not_rankable: true", "ranks")
    if ranks is not None:
        if not isinstance(ranks, list) or len(ranks) != k or not all(_is_int(r) and 1 <= r <= k for r in ranks):
            raise LabelError(f"expected {k} integers from 1 to {k}, one per output in the order shown", "ranks")
        ranks = dense_ranks(ranks)
    if not_rankable:
        ranks = [1] * k  # the contract's reading of a not-rankable item: all tied, no pairs
    likert = body.get("likert")
    if likert is None and require_likert and not not_rankable:
        raise LabelError(f"expected {k} Likert scores from 1 to 7, one per output", "likert")
    if likert is not None:
        if not isinstance(likert, list) or len(likert) != k or not all(_is_int(s) and 1 <= s <= 7 for s in likert):
            raise LabelError(f"expected {k} integers from 1 to 7, one per output", "likert")
    got_flags = body.get("flags")
    if got_flags is None:
        got_flags = [{} for _ in range(k)]
    if not isinstance(got_flags, list) or len(got_flags) != k or not all(isinstance(f, dict) for f in got_flags):
        raise LabelError(f"expected {k} objects of flag: true/false, one per output", "flags")
    clean = []
    for i, f in enumerate(got_flags):
        unknown = sorted(set(f) - set(flags))
        if unknown:
            raise LabelError(f"output {i + 1}: unknown flag {unknown[0]!r}; this project asks {', '.join(flags)}",
                             "flags")
        bad = [name for name, v in f.items() if v is not None and not isinstance(v, bool)]
        if bad:
            raise LabelError(f"output {i + 1}: {bad[0]!r} must be true, false or null", "flags")
        clean.append({name: f.get(name, False) for name in flags})
    return {"ranks": ranks, "likert": likert, "flags": clean, "not_rankable": not_rankable}


def validate_comparison(body: dict) -> dict:
    choice = body.get("choice")
    if choice not in CHOICES:
        raise LabelError("expected \"A\" (left is better), \"B\" (right is better) or \"tie\"", "choice")
    return {"choice": choice}


def validate(kind: str, body, *, k: int, flags: list[str], require_likert: bool) -> dict:
    if not isinstance(body, dict):
        raise LabelError("expected a JSON object")
    seconds = body.get("seconds")
    if seconds is not None and (not isinstance(seconds, (int, float)) or isinstance(seconds, bool)
                                or not 0 <= seconds < 86400 * 7):
        raise LabelError("expected the seconds spent, a number from 0 to one week", "seconds")
    if kind == "demonstration":
        out = validate_demonstration(body)
    elif kind == "ranking":
        out = validate_ranking(body, k, flags, require_likert)
    elif kind == "comparison":
        out = validate_comparison(body)
    else:
        raise LabelError(f"unknown task kind {kind!r}")
    return out
