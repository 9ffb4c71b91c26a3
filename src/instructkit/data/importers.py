"""Importers: public preference and demonstration formats -> the data contract.

Each importer maps one decoded JSON object (plus its file and line, for errors) to one contract
record as a plain dict, or raises InputError naming the file, line and field. The output is then
checked once more by the contract's own parser, so whatever `instructkit import` writes loads with
`instructkit.data.load(path, kind)`.

- `hh`: Anthropic HH-RLHF transcripts, `{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}`.
  The prompt is the prefix both transcripts share, up to and including its last "\\n\\nAssistant:"
  (earlier turns included: multi-turn dialogues keep their history); what follows is each response.
- `trl-pairs`: TRL preference records, `{"prompt", "chosen", "rejected"}` (explicit prompt) or
  `{"chosen", "rejected"}` (implicit prompt: the shared prefix, cut at a word boundary); strings or
  conversational lists of `{"role", "content"}` messages.
- `trl-completions`: TRL prompt-completion records, `{"prompt", "completion"}` (-> demonstration),
  with `"label": true|false` (-> unpaired, KTO); strings or conversational; `{"messages"}` too.
- `ratings`: `{"prompt", "completions", "scores"}` (or `completions` as `{"text", "score"}` objects)
  -> a K-way ranking, 1 = highest score, equal scores tie.

No torch here: `instructkit import` starts in well under a second."""
from __future__ import annotations

import math
import re
from typing import Any, Callable

from instructkit.data.records import ROLES, parse_demonstration, parse_ranking, parse_unpaired, scores_to_ranks
from instructkit.errors import InputError

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}

# What each output kind is checked with before it is written.
CONTRACT = {"pair": parse_ranking, "ranking": parse_ranking, "demonstration": parse_demonstration,
            "unpaired": parse_unpaired}


def _err(msg: str, path: str, line: int, field: str) -> InputError:
    return InputError(msg, path=path, line=line, field=field)


def _get_str(obj: dict, key: str, path: str, line: int) -> str:
    if key not in obj:
        raise _err("missing required field", path, line, key)
    if not isinstance(obj[key], str):
        raise _err(f"expected a string, got {type(obj[key]).__name__}", path, line, key)
    return obj[key]


def _extra(obj: dict, known: set[str]) -> dict:
    return {k: v for k, v in obj.items() if k not in known}


def common_prefix_len(a, b) -> int:
    """Length of the longest common prefix of two strings (or two lists)."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def plain_chat_text(messages: list[dict]) -> str:
    """The prompt text of a conversation under the plain template: the same string
    `instructkit.data.encode.render_prompt` builds for `messages` with template.kind=plain."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


# ------------------------------------------------------------------ Anthropic HH-RLHF

def split_hh(chosen: str, rejected: str) -> tuple[str, str, str]:
    """-> (prompt, chosen response, rejected response), with prompt + response == transcript.

    Raises ValueError(field, message) when the two transcripts do not share a prompt that ends
    with an assistant turn, differ before their final assistant response, or are identical."""
    shared = chosen[:common_prefix_len(chosen, rejected)]
    cut = shared.rfind(ASSISTANT)
    if cut < 0:
        raise ValueError("chosen", f"no {ASSISTANT!r} turn shared by chosen and rejected (expected HH-RLHF "
                                   f"transcripts: '\\n\\nHuman: ...\\n\\nAssistant: ...')")
    prompt = chosen[:cut + len(ASSISTANT)]
    c, r = chosen[len(prompt):], rejected[len(prompt):]
    for name, text in (("chosen", c), ("rejected", r)):
        if HUMAN in text or ASSISTANT in text:
            raise ValueError(name, "the transcripts differ before their final assistant response "
                                   "(the response after the shared prompt holds further turns)")
    if c == r:
        raise ValueError("rejected", "identical to chosen: the pair holds no preference")
    return prompt, c, r


def hh_messages(prompt: str) -> list[dict]:
    """'\\n\\nHuman: Hi\\n\\nAssistant: Hello\\n\\nHuman: Bye\\n\\nAssistant:' ->
    [user 'Hi', assistant 'Hello', user 'Bye']: the turns before the response, contents stripped.
    Raises ValueError(message) on text before the first turn or a prompt not ending in 'Assistant:'."""
    parts = _TURN.split(prompt)  # [before, role, content, role, content, ...]
    if parts[0].strip():
        raise ValueError(f"text before the first {HUMAN!r} turn: {parts[0][:40]!r}")
    turns = [{"role": _HH_ROLE[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]
    if not turns or turns[-1]["role"] != "assistant" or turns[-1]["content"]:
        raise ValueError(f"the prompt must end with {ASSISTANT!r}")
    turns.pop()  # the empty assistant turn the response fills
    if not turns:
        raise ValueError(f"no {HUMAN!r} turn before the response")
    return turns


def import_hh(obj: dict, path: str, line: int, *, to: str = "pairs", style: str = "text") -> tuple[str, dict]:
    """One HH-RLHF record -> ("pair", {"prompt", "chosen", "rejected"}) or, with to="demonstrations",
    ("demonstration", the chosen response). style="messages" adds the prompt as `messages` turns
    (pairs) or writes the demonstration in its `messages` form."""
    chosen, rejected = _get_str(obj, "chosen", path, line), _get_str(obj, "rejected", path, line)
    try:
        prompt, c, r = split_hh(chosen, rejected)
    except ValueError as e:
        raise _err(e.args[1], path, line, e.args[0]) from None
    try:
        turns = hh_messages(prompt)
    except ValueError as e:
        raise _err(str(e), path, line, "chosen") from None
    meta = _extra(obj, {"chosen", "rejected"})
    if to == "demonstrations":
        if not c.strip():
            raise _err("empty response: a demonstration needs one", path, line, "chosen")
        if style == "messages":
            return "demonstration", {"messages": turns + [{"role": "assistant", "content": c.strip()}], **meta}
        return "demonstration", {"prompt": prompt, "completion": c, **meta}
    record = {"prompt": prompt, "chosen": c, "rejected": r}
    if style == "messages":
        record["messages"] = turns
    return "pair", {**record, **meta}


# ------------------------------------------------------------------ TRL formats

def _messages(value: Any, path: str, line: int, field: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise _err("expected a string or a non-empty list of {role, content} messages", path, line, field)
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise _err(f"item {i}: expected {{\"role\": one of {list(ROLES)}, \"content\": string}}",
                       path, line, field)
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _one_assistant(msgs: list[dict], path: str, line: int, field: str) -> str:
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise _err("expected exactly one assistant message after the prompt", path, line, field)
    return msgs[0]["content"]


def implicit_prompt(chosen: str, rejected: str) -> int:
    """Where the shared prompt of two strings ends: their common prefix, moved back to the start of
    the word in which they differ and before the whitespace preceding it, so that both responses
    begin with that whitespace ('... A: four' / '... A: five' -> prompt '... A:'). 0 = nothing shared."""
    idx = common_prefix_len(chosen, rejected)
    if idx == 0:
        return 0

    def at_boundary(s: str) -> bool:
        return idx == len(s) or s[idx].isspace() or s[idx - 1].isspace()

    if not (at_boundary(chosen) and at_boundary(rejected)):
        while idx > 0 and not chosen[idx - 1].isspace():
            idx -= 1
    while idx > 0 and chosen[idx - 1].isspace():
        idx -= 1
    return idx


def import_trl_pair(obj: dict, path: str, line: int, *, to: str = "pairs", style: str = "text") -> tuple[str, dict]:
    """A TRL preference record (explicit or implicit prompt; standard or conversational) -> a pair."""
    for key in ("chosen", "rejected"):
        if key not in obj:
            raise _err("missing required field", path, line, key)
    meta = _extra(obj, {"prompt", "chosen", "rejected"})
    conversational = isinstance(obj["chosen"], list)
    messages = None
    if not conversational:
        chosen, rejected = _get_str(obj, "chosen", path, line), _get_str(obj, "rejected", path, line)
        if "prompt" in obj:
            prompt = _get_str(obj, "prompt", path, line)
        else:  # implicit prompt: the shared prefix
            cut = implicit_prompt(chosen, rejected)
            if cut == 0:
                raise _err("no explicit prompt and chosen and rejected share no prefix", path, line, "prompt")
            prompt, chosen, rejected = chosen[:cut], chosen[cut:], rejected[cut:]
    else:
        c_msgs = _messages(obj["chosen"], path, line, "chosen")
        r_msgs = _messages(obj["rejected"], path, line, "rejected")
        if "prompt" in obj:
            messages = _messages(obj["prompt"], path, line, "prompt")
        else:  # implicit prompt: the shared leading messages
            n = common_prefix_len(c_msgs, r_msgs)
            if n == 0:
                raise _err("no explicit prompt and chosen and rejected share no leading messages", path, line,
                           "prompt")
            messages, c_msgs, r_msgs = c_msgs[:n], c_msgs[n:], r_msgs[n:]
        chosen = _one_assistant(c_msgs, path, line, "chosen")
        rejected = _one_assistant(r_msgs, path, line, "rejected")
        prompt = plain_chat_text(messages)
    if chosen == rejected:
        raise _err("identical to chosen: the pair holds no preference", path, line, "rejected")
    if to == "demonstrations":
        if not chosen.strip():
            raise _err("empty response: a demonstration needs one", path, line, "chosen")
        if messages is not None and style == "messages":
            return "demonstration", {"messages": messages + [{"role": "assistant", "content": chosen}], **meta}
        return "demonstration", {"prompt": prompt, "completion": chosen, **meta}
    record = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if messages is not None and style == "messages":
        record["messages"] = messages
    return "pair", {**record, **meta}


def import_trl_completion(obj: dict, path: str, line: int, *, to: str = "pairs",
                          style: str = "text") -> tuple[str, dict]:
    """A TRL prompt-completion record -> a demonstration, or with `label` an unpaired (KTO) record."""
    if "messages" in obj and "completion" not in obj:
        return "demonstration", obj  # already the contract's conversational demonstration
    if "prompt" not in obj:
        raise _err("missing required field", path, line, "prompt")
    if "completion" not in obj:
        raise _err("missing required field", path, line, "completion")
    meta = _extra(obj, {"prompt", "completion", "label"})
    messages = None
    if isinstance(obj["prompt"], list):
        messages = _messages(obj["prompt"], path, line, "prompt")
        completion = _one_assistant(_messages(obj["completion"], path, line, "completion"), path, line,
                                    "completion")
        prompt = plain_chat_text(messages)
    else:
        prompt = _get_str(obj, "prompt", path, line)
        completion = _get_str(obj, "completion", path, line)
    if "label" in obj:
        if not isinstance(obj["label"], bool):
            raise _err("expected true or false", path, line, "label")
        record = {"prompt": prompt, "completion": completion, "label": obj["label"]}
        if messages is not None and style == "messages":
            record["messages"] = messages
        return "unpaired", {**record, **meta}
    if messages is not None and style == "messages":
        return "demonstration", {"messages": messages + [{"role": "assistant", "content": completion}], **meta}
    return "demonstration", {"prompt": prompt, "completion": completion, **meta}


# ------------------------------------------------------------------ ratings

_TEXT_KEYS = ("text", "completion", "response")
_SCORE_KEYS = ("score", "rating")


def import_rating(obj: dict, path: str, line: int, *, to: str = "pairs", style: str = "text") -> tuple[str, dict]:
    """{"prompt", "completions": [K strings], "scores": [K numbers]} (or "ratings"; or completions as
    objects {"text"|"completion"|"response", "score"|"rating"}) -> a K-way ranking; scores are kept."""
    prompt = _get_str(obj, "prompt", path, line)
    if "completions" not in obj:
        raise _err("missing required field", path, line, "completions")
    items = obj["completions"]
    if not isinstance(items, list) or len(items) < 2:
        raise _err("expected a list of at least 2 completions", path, line, "completions")
    score_key = "scores" if "scores" in obj else "ratings"
    if all(isinstance(c, dict) for c in items):
        completions, scores = [], []
        for i, c in enumerate(items):
            text = next((c[k] for k in _TEXT_KEYS if k in c), None)
            score = next((c[k] for k in _SCORE_KEYS if k in c), None)
            if not isinstance(text, str):
                raise _err(f"item {i}: expected a string under one of {list(_TEXT_KEYS)}", path, line, "completions")
            completions.append(text)
            scores.append(score)
        score_key = "completions"
    elif all(isinstance(c, str) for c in items):
        completions = items
        if score_key not in obj:
            raise _err("missing required field", path, line, "scores")
        scores = obj[score_key]
        if not isinstance(scores, list) or len(scores) != len(completions):
            raise _err(f"expected {len(completions)} numbers (one per completion)", path, line, score_key)
    else:
        raise _err("expected a list of strings, or of {\"text\", \"score\"} objects", path, line, "completions")
    for i, s in enumerate(scores):
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise _err(f"item {i}: expected a finite number, got {s!r}", path, line, score_key)
    meta = _extra(obj, {"prompt", "completions", "scores", "ratings"})
    return "ranking", {"prompt": prompt, "completions": completions, "ranks": scores_to_ranks(scores),
                       "scores": scores, **meta}


IMPORTERS: dict[str, Callable[..., tuple[str, dict]]] = {
    "hh": import_hh,
    "trl-pairs": import_trl_pair,
    "trl-completions": import_trl_completion,
    "ratings": import_rating,
}


def check_contract(kind: str, record: dict, path: str, line: int) -> None:
    """Parse an importer's output with the contract's own parser (a bug here is ours, but say where)."""
    CONTRACT[kind](record, path, line)
