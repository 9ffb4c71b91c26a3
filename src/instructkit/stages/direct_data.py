"""The `dpo` stage's data: preference files (K-way rankings, pairs, ratings, or KTO's unpaired
records) validated and encoded into batch elements, one `Group` per prompt with all its
completions, each tokenized once. stages/direct.py trains on them."""
from __future__ import annotations

from dataclasses import dataclass

from instructkit import data as datalib
from instructkit.config import DirectConfig
from instructkit.data.encode import encode_text, render_prompt
from instructkit.data.jsonl import iter_json_lines
from instructkit.errors import InputError


@dataclass
class Group:
    """One prompt with its completions, as token ids. Pairwise losses: K >= 2 completions with
    ranks (1 = best). KTO: one completion, `desirable`, and `kl_completion`, the completion of
    another prompt that forms KTO's mismatched pair (x, y') for the reference point z0."""
    prompt: list[int]
    completions: list[list[int]]
    ranks: list[int]
    desirable: bool | None = None
    kl_completion: list[int] | None = None


def encode_group(prompt_text: str, completion_texts: list[str], tok, max_len: int) -> tuple[list[int], list[list[int]], int]:
    """Prompt and completions tokenized separately (no merge across the boundary), EOS appended to
    each completion. An empty prompt becomes [EOS] so that every completion token is scored. Over
    `max_len`, the prompt keeps its end (shared by all K) and each completion its start.
    Returns (prompt ids, completion ids, number of completions truncated)."""
    p = encode_text(tok, prompt_text) if prompt_text else []
    p = p or [tok.eos_token_id]
    cs = [encode_text(tok, c) + [tok.eos_token_id] for c in completion_texts]
    longest = max(len(c) for c in cs)
    if len(p) + longest > max_len:
        keep = max(1, max_len - longest) if longest < max_len else max(1, max_len // 2)
        p = p[-keep:]
    truncated = sum(len(p) + len(c) > max_len for c in cs)
    return p, [c[: max_len - len(p)] for c in cs], truncated


def _peek_kind(path: str) -> str:
    for _, obj in iter_json_lines(path):
        if "label" in obj:
            return "unpaired"
        return "ranking" if ("completions" in obj or "chosen" in obj or "rejected" in obj) else "other"
    return "other"


def load_groups(path: str, cfg: DirectConfig, tok, field: str, max_len: int = 0) -> tuple[list[Group], dict]:
    """Validated, encoded batch elements of one data file, plus counts for the start-up line.
    max_len: token limit per prompt + completion (0 = cfg.data.max_len)."""
    max_len = max_len or cfg.data.max_len
    kind = _peek_kind(path)
    groups: list[Group] = []
    info = {"records": 0, "skipped_no_pair": 0, "truncated": 0}
    if cfg.loss == "kto" and cfg.kto_from == "unpaired":
        if kind == "ranking":
            raise InputError("loss=kto reads unpaired {\"prompt\",\"completion\",\"label\"} records; this file holds "
                             "rankings or pairs: pass kto_from=rankings to split them", path=path, field=field)
        items = [(r.prompt, r.completion, r.label) for r in datalib.load(path, "unpaired")]
        info["records"] = len(items)
    else:
        if kind == "unpaired":
            raise InputError(f"loss={cfg.loss} needs rankings or pairs; unpaired (labelled) records train "
                             "loss=kto", path=path, field=field)
        rankings = datalib.load(path, "ranking")
        info["records"] = len(rankings)
        items = []
        for r in rankings:
            if r.not_rankable or not r.pairs():
                info["skipped_no_pair"] += 1  # all tied: no preference to learn from
                continue
            if cfg.loss == "kto":  # best rank desirable, worst rank undesirable, the middle dropped
                best, worst = min(r.ranks), max(r.ranks)
                items += [(r.prompt, c, True) for c, k in zip(r.completions, r.ranks) if k == best]
                items += [(r.prompt, c, False) for c, k in zip(r.completions, r.ranks) if k == worst]
            else:
                items.append((r.prompt, r.completions, r.ranks))
    for prompt, completions, extra in items:
        text = render_prompt(prompt, tok, cfg.template)
        if cfg.loss == "kto":
            p, (c,), n = encode_group(text, [completions], tok, max_len)
            groups.append(Group(p, [c], [1 if extra else 2], desirable=bool(extra)))
        else:
            p, cs, n = encode_group(text, completions, tok, max_len)
            groups.append(Group(p, cs, list(extra)))
        info["truncated"] += n
    if not groups:
        raise InputError("no usable records: every ranking is all ties or not_rankable", path=path, field=field)
    if cfg.loss == "kto":
        for i, g in enumerate(groups):
            # KTO's mismatched pair (x_i, y_j): TRL's choice j = i - 1, stepping further back past examples
            # of the same prompt (kto_from=rankings puts them next to each other)
            j = next(((i - s) % len(groups) for s in range(1, len(groups)) if groups[(i - s) % len(groups)].prompt != g.prompt),
                     (i - 1) % len(groups))
            c = groups[j].completions[0]
            g.kl_completion = c[: max(1, max_len - len(g.prompt))]
    return groups, info


def length_key(g: Group) -> int:
    """Sort key for length bucketing: completions run as an (N, C) block, the prompts as (G, P)."""
    return max(map(len, g.completions)) * 100_000 + len(g.prompt)
