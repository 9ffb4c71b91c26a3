"""The filter layer: checks on what goes into the model and what comes out (InstructGPT's
deployment-side mitigations: the paper's models were served behind output filters).

A rule is a word list, a regular expression, or a score threshold on a reward / classifier model
named by a scorer spec (`instructkit.scoring`, e.g. 'rm:runs/rm'). Each rule looks at the prompt,
the output or both, and either blocks or annotates. Every hit carries its reason, which the server
puts in the response (`instructkit_filter`); a blocked output ends with finish_reason
"content_filter" and its text withheld, a blocked prompt is refused with a 400.

Rules come from a YAML or JSON file (`instructkit serve --filters filters.yaml`):

    rules:
      - {name: profanity, kind: words, words: [darn, heck], target: both, action: block}
      - {name: emails, kind: regex, pattern: '[\\w.]+@[\\w.]+', target: output, action: annotate}
      - {name: low-reward, kind: score, scorer: 'rm:runs/rm', threshold: -1.0, flag_when: below,
         target: output, action: block}

Word lists match whole words, case-insensitively. Score rules score (prompt, output) pairs for
the output and (prompt, "") for the prompt."""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

from instructkit.errors import InputError


@dataclass
class FilterRule:
    """One check. Fields not used by its kind are ignored."""
    name: str
    """Shown in every hit, so a client can tell which rule fired."""
    kind: Literal["words", "regex", "score"]
    """words: any listed word; regex: a Python regular expression; score: a scorer's score vs threshold."""
    target: Literal["prompt", "output", "both"] = "both"
    """What the rule looks at."""
    action: Literal["block", "annotate"] = "block"
    """block: refuse the prompt / withhold the output; annotate: only report the hit."""
    words: list[str] = field(default_factory=list)
    """kind=words: the words, matched whole and case-insensitively."""
    pattern: str = ""
    """kind=regex: the pattern (use (?i) for case-insensitive)."""
    scorer: str = ""
    """kind=score: a scorer spec, e.g. 'rm:runs/rm' (a reward model) or any registered kind."""
    threshold: float = 0.0
    """kind=score: the threshold the score is compared with."""
    flag_when: Literal["below", "above"] = "below"
    """kind=score: hit when the score is below (a reward model) or above (a harm classifier) it."""

    def applies_to(self, target: str) -> bool:
        return self.target in (target, "both")


@dataclass
class FilterHit:
    rule: str
    target: str
    action: str
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


class FilterSet:
    """The rules, compiled; scorers are loaded once, here."""

    def __init__(self, rules: list[FilterRule] = (), scorers: dict | None = None):
        from instructkit.scoring import get_scorer

        self.rules = list(rules)
        self._compiled: dict[str, re.Pattern] = {}
        self._scorers = dict(scorers or {})
        for r in self.rules:
            where = f"filter rule {r.name!r}"
            if r.kind not in ("words", "regex", "score"):
                raise InputError(f"{where}: kind must be words, regex or score, got {r.kind!r}", field="kind")
            if r.target not in ("prompt", "output", "both") or r.action not in ("block", "annotate"):
                raise InputError(f"{where}: target must be prompt|output|both and action block|annotate")
            if r.kind == "words":
                words = [w for w in r.words if w.strip()]
                if not words:
                    raise InputError(f"{where}: a words rule needs a non-empty 'words' list", field="words")
                self._compiled[r.name] = re.compile(
                    r"(?<!\w)(" + "|".join(re.escape(w.strip()) for w in words) + r")(?!\w)", re.IGNORECASE)
            elif r.kind == "regex":
                try:
                    self._compiled[r.name] = re.compile(r.pattern)
                except re.error as e:
                    raise InputError(f"{where}: bad regular expression: {e}", field="pattern") from None
            elif r.scorer not in self._scorers:
                if not r.scorer:
                    raise InputError(f"{where}: a score rule needs 'scorer' (e.g. rm:DIR)", field="scorer")
                self._scorers[r.scorer] = get_scorer(r.scorer)

    @classmethod
    def load(cls, path: str | Path) -> "FilterSet":
        """Rules from YAML or JSON: a list of rules, or {"rules": [...]}."""
        import yaml

        p = Path(path)
        if not p.is_file():
            raise InputError("filter file does not exist", path=str(p))
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))  # JSON is YAML
        except yaml.YAMLError as e:
            raise InputError(f"malformed YAML/JSON: {e}", path=str(p)) from None
        if isinstance(data, dict):
            data = data.get("rules")
        if not isinstance(data, list):
            raise InputError("expected a list of rules (or {rules: [...]})", path=str(p))
        known = {f.name for f in fields(FilterRule)}
        rules = []
        for i, d in enumerate(data):
            if not isinstance(d, dict) or "name" not in d or "kind" not in d:
                raise InputError(f"rule {i + 1}: expected a mapping with at least 'name' and 'kind'", path=str(p))
            unknown = set(d) - known
            if unknown:
                raise InputError(f"rule {i + 1}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}", path=str(p))
            rules.append(FilterRule(**d))
        return cls(rules)

    # ------------------------------------------------------------------ properties the server plans with

    def __bool__(self) -> bool:
        return bool(self.rules)

    @property
    def holdback_words(self) -> list[str]:
        """Blocked output words: never streamed in part."""
        return [w for r in self.rules if r.kind == "words" and r.action == "block" and r.applies_to("output")
                for w in r.words]

    @property
    def blocks_output_by_score(self) -> bool:
        """A blocking score rule needs the whole output before any of it may be shown."""
        return any(r.kind == "score" and r.action == "block" and r.applies_to("output") for r in self.rules)

    def to_dict(self) -> list[dict]:
        return [asdict(r) for r in self.rules]

    # ------------------------------------------------------------------ checks

    def _match(self, rule: FilterRule, text: str, target: str) -> FilterHit | None:
        m = self._compiled[rule.name].search(text)
        if m is None:
            return None
        what = f"word {m.group(0)!r}" if rule.kind == "words" else f"pattern /{rule.pattern}/ at {m.group(0)[:80]!r}"
        return FilterHit(rule.name, target, rule.action, f"the {target} matched {what}")

    def _score(self, rule: FilterRule, prompts: list[str], texts: list[str], target: str) -> list[FilterHit | None]:
        scores = self._scorers[rule.scorer](prompts, texts)
        hits: list[FilterHit | None] = []
        for s in scores:
            flagged = s < rule.threshold if rule.flag_when == "below" else s > rule.threshold
            hits.append(FilterHit(rule.name, target, rule.action,
                                  f"the {target} scored {s:.4g} by {rule.scorer}, {rule.flag_when} the threshold "
                                  f"{rule.threshold:g}") if flagged else None)
        return hits

    def check_prompt(self, prompt: str) -> list[FilterHit]:
        hits: list[FilterHit] = []
        for r in self.rules:
            if not r.applies_to("prompt"):
                continue
            hit = self._score(r, [prompt], [""], "prompt")[0] if r.kind == "score" else self._match(r, prompt, "prompt")
            if hit is not None:
                hits.append(hit)
        return hits

    def check_outputs(self, prompts: list[str], outputs: list[str]) -> list[list[FilterHit]]:
        """Hits per output, of every output rule."""
        hits: list[list[FilterHit]] = [[] for _ in outputs]
        for r in self.rules:
            if not r.applies_to("output"):
                continue
            found = (self._score(r, prompts, outputs, "output") if r.kind == "score"
                     else [self._match(r, o, "output") for o in outputs])
            for h, hit in zip(hits, found):
                if hit is not None:
                    h.append(hit)
        return hits

    def early_output_check(self):
        """A check cheap enough for every decoding step: the blocking word and regex rules on the
        output so far, `check(text, final)`. Until the output is final, a word touching the end of
        the text may still grow ("darn" -> "darnit"), so it waits (held back meanwhile)."""
        rules = [r for r in self.rules if r.kind != "score" and r.action == "block" and r.applies_to("output")]
        if not rules:
            return None

        def check(text: str, final: bool = False) -> FilterHit | None:
            for r in rules:
                m = self._compiled[r.name].search(text)
                if m is not None and (final or not (r.kind == "words" and m.end() == len(text))):
                    return self._match(r, text, "output")
            return None
        return check


def parse_rules(data) -> list[FilterRule]:
    """Rules from already-parsed JSON (a list of mappings)."""
    return [FilterRule(**d) for d in (json.loads(data) if isinstance(data, str) else data)]
