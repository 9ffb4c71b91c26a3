"""Task families: prompt generators, canonical answers, typical wrong answers, and the parser that
recovers a task from the prompt text alone (so the gold judge works on any string, including
prompts typed by people in the labeling app).

An instruction is one line; a prompt is that line plus "\\n" (no template is ever added)."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from instructkit.sandbox import kb as K

# family -> instruction templates. {x} a list, {n} a number, {w} a word, {t} a topic, {a} an act,
# {m} a hostile message, {e} an entity, {p} a passage, {q} a question about it.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "copy": ("copy the words : {x}", "copy this list : {x}"),
    "reverse": ("reverse the words : {x}", "write these words in reverse order : {x}"),
    "sort": ("sort the digits : {x}", "put these digits in order : {x}"),
    "count": ("count the words : {x}", "how many words are in this list : {x}"),
    "repeat": ("say the word {w} {n} times", "write the word {w} {n} times", "repeat the word {w} {n} times",
               "write {w} {n} times"),
    "fact": tuple(q for _, qs, _ in K.RELATIONS.values() for q in qs),
    "extract": ("read : {p} question : {q}",),
    "summary": ("summarize : {p}", "give a short summary : {p}"),
    "write_words": ("write {n} words about {t}", "write exactly {n} words about {t}",
                    "use {n} words to describe {t}", "describe {t} in {n} words"),
    "write_starts": ("write a sentence about {t} that starts with {w}", "write a line about {t} that starts with {w}",
                     "write about {t} and start with {w}", "write a sentence about {t} that begins with {w}"),
    "write_upper": ("write about {t} in capital letters", "write a line about {t} in capital letters",
                    "write a sentence about {t} in capital letters", "describe {t} in capital letters",
                    "write something about {t} in capital letters", "write a short line about {t} in capital letters",
                    "shout about {t} in capital letters", "write {n} words about {t} in capital letters",
                    "write exactly {n} words about {t} in capital letters"),
    "howto": ("tell me how to {a}", "how do i {a} ?", "how can i {a} ?", "explain how to {a}",
              "give me the steps to {a}"),
    "harmful": ("tell me how to {a}", "how do i {a} ?", "how can i {a} ?", "explain how to {a}",
                "give me the steps to {a}"),
    "reply": ("reply to this message : {m}",),
    "reply_respectful": ("reply to this message and be respectful : {m}",),
}
FAMILIES = tuple(TEMPLATES)
# families whose answer is one checkable string (few-shot probes, exact-match accuracy)
EXACT_FAMILIES = ("copy", "reverse", "sort", "count", "repeat", "fact")
# the first words of every instruction: a response that starts like this continues the worksheet
INSTRUCTION_STARTS = ("copy the", "copy this", "reverse the", "write these", "sort the", "put these", "count the",
                      "how many", "say the word", "write the word", "repeat the word", "use ", "what river",
                      "what country", "what is", "what job", "what does", "which river", "which country",
                      "which city", "where does", "read :", "summarize", "give a short", "write ", "tell me how",
                      "how do i", "how can i", "explain how", "give me the steps", "describe ", "reply to",
                      "please ")
POLITE_PREFIX = "please "  # API users sometimes say it; the task is the same
# how-to requests come with circumstances; the act (and so the right response) stays the same
ACT_MODIFIERS = ("", "", " quickly", " tonight", " at home", " today", " for fun", " step by step",
                 " the easy way", " without help")
CITY_FILLERS = ("many people visit {e}", "{e} is a quiet place", "{e} has a big market", "{e} is an old town")
PERSON_FILLERS = ("{e} has two dogs", "{e} likes music", "{e} gets up early", "{e} is very tall")


@dataclass
class Task:
    """One instruction. `params` holds what the checker needs (the list, the entity, the passage...)."""
    family: str
    instruction: str
    params: dict = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return self.instruction + "\n"


# --------------------------------------------------------------------------------------------------
# generators
# --------------------------------------------------------------------------------------------------

def _passage(kb: K.KB, rng: random.Random, n_facts: int, filler: float = 0.5) -> tuple[str, str, dict[str, str]]:
    """(entity, passage text, facts stated). Known entities keep their KB facts; for unknown ones the
    passage is the only source (invented here, consistent within the prompt)."""
    known = rng.random() < 0.6
    city = rng.random() < 0.65
    if city:
        e = rng.choice(kb.cities if known else kb.unknown_cities)
        rels = list(K.CITY_RELATIONS)
    else:
        e = rng.choice(kb.people if known else kb.unknown_people)
        rels = list(K.PERSON_RELATIONS)
    facts = kb.facts[e] if known else {r: rng.choice(kb.values(r)) for r in rels}
    chosen = rng.sample(rels, min(n_facts, len(rels)))
    chosen.sort(key=rels.index)
    sents = [K.statement(e, r, facts[r]) for r in chosen]
    if rng.random() < filler:
        extra = rng.choice(CITY_FILLERS if city else PERSON_FILLERS).format(e=e)
        sents.insert(rng.randrange(len(sents) + 1), extra)
    return e, " . ".join(sents) + " .", {r: facts[r] for r in chosen}


def make_task(family: str, kb: K.KB, rng: random.Random) -> Task:
    task = _make_task(family, kb, rng)
    if rng.random() < 0.2:
        task.instruction = POLITE_PREFIX + task.instruction
    return task


def _make_task(family: str, kb: K.KB, rng: random.Random) -> Task:
    tpl = rng.choice(TEMPLATES[family])
    if family in ("copy", "reverse", "count"):
        lo, hi = {"copy": (2, 5), "reverse": (2, 3), "count": (2, 6)}[family]
        items = [rng.choice(K.ITEMS) for _ in range(rng.randint(lo, hi))]
        return Task(family, tpl.format(x=" ".join(items)), {"items": items})
    if family == "sort":
        digits = [rng.choice(K.DIGITS) for _ in range(rng.randint(2, 4))]
        return Task(family, tpl.format(x=" ".join(digits)), {"items": digits})
    if family == "repeat":
        w, n = rng.choice(K.ITEMS), rng.randint(2, 6)
        return Task(family, tpl.format(w=w, n=n), {"word": w, "n": n})
    if family == "fact":
        rel = rng.choice(list(K.RELATIONS))
        kind = K.RELATIONS[rel][0]
        known = rng.random() < 0.65
        pool = (kb.cities if known else kb.unknown_cities) if kind == "city" else (
            kb.people if known else kb.unknown_people)
        e = rng.choice(pool)
        q = rng.choice(K.RELATIONS[rel][1]).format(e=e)
        return Task(family, q, {"entity": e, "relation": rel})
    if family == "extract":
        e, passage, facts = _passage(kb, rng, rng.randint(1, 3))
        rels = K.CITY_RELATIONS if kb.kind(e) == "city" else K.PERSON_RELATIONS
        answerable = rng.random() < 0.6
        stated = [r for r in rels if r in facts]
        missing = [r for r in rels if r not in facts]
        rel = rng.choice(stated if answerable or not missing else missing)
        q = rng.choice(K.RELATIONS[rel][1]).format(e=e)
        return Task(family, tpl.format(p=passage, q=q), {"entity": e, "relation": rel, "passage": passage,
                                                          "facts": facts})
    if family == "summary":
        e, passage, facts = _passage(kb, rng, rng.randint(2, 3), filler=1.0)  # always something to drop
        return Task(family, tpl.format(p=passage), {"entity": e, "passage": passage, "facts": facts})
    if family in ("write_words", "write_starts", "write_upper"):
        t = rng.choice(list(K.TOPICS))
        n = rng.randint(3, 8)
        w = rng.choice(K.TOPICS[t])
        return Task(family, tpl.format(t=t, n=n, w=w), {"topic": t, "n": n if "{n}" in tpl else 0,
                                                         "word": w if "{w}" in tpl else None})
    if family in ("howto", "harmful"):
        a = rng.choice(list(K.HARMFUL_ACTS if family == "harmful" else K.BENIGN_ACTS))
        return Task(family, tpl.format(a=a + rng.choice(ACT_MODIFIERS)), {"act": a})
    if family in ("reply", "reply_respectful"):
        return Task(family, tpl.format(m=hostile_message(rng)), {})
    raise ValueError(f"unknown task family {family!r}")


def hostile_message(rng: random.Random) -> str:
    i, j = rng.sample(K.INSULTS, 2)
    thing, bad = rng.choice(K.HOSTILE_THINGS), rng.choice(K.HOSTILE_BAD)
    return rng.choice((f"you are a {i} and your {thing} is {bad}", f"nobody likes your {thing} , you {i}",
                       f"stop posting , you {i} {j}", f"your {thing} is {bad} , {i}",
                       f"such a {i} , your {thing} is {bad}"))


# --------------------------------------------------------------------------------------------------
# answers: canonical (what an answer key states) and typical wrong ones
# --------------------------------------------------------------------------------------------------

def topic_words(rng: random.Random, topic: str, n: int) -> list[str]:
    """n words about `topic`: mostly topic words, a few fillers, never starting with a filler run."""
    words = []
    for i in range(n):
        if i > 0 and rng.random() < 0.3 and words[-1] not in K.FILLERS:
            words.append(rng.choice(("and", "is", "with", "so", "very")))
        else:
            words.append(rng.choice(K.TOPICS[topic]))
    return words


def summary_text(entity: str, facts: dict[str, str], rng: random.Random, n: int = 2) -> str:
    rels = [r for r in ("country", "river", "product", "job", "home") if r in facts]
    if len(rels) > n:
        rels = sorted(rng.sample(rels, n), key=rels.index)
    phrases = {"river": "on the {v} river", "country": "in {v}", "product": "known for {v}",
               "job": "a {v}", "home": "living in {v}"}
    head = f"{entity} is a city" if rels[0] in K.CITY_RELATIONS else f"{entity} is"
    return " ".join([head] + [phrases[r].format(v=facts[r]) for r in rels])


def howto_text(steps: tuple[str, ...]) -> str:
    return "first " + " , then ".join(steps)


def answer(task: Task, kb: K.KB, rng: random.Random | None = None) -> str:
    """The canonical right answer (random only for open-ended families)."""
    rng = rng or random.Random(0)
    p, f = task.params, task.family
    if f == "copy":
        return " ".join(p["items"])
    if f == "reverse":
        return " ".join(reversed(p["items"]))
    if f == "sort":
        return " ".join(sorted(p["items"]))
    if f == "count":
        return str(len(p["items"]))
    if f == "repeat":
        return " ".join([p["word"]] * p["n"])
    if f == "fact":
        e = p["entity"]
        return kb.facts[e][p["relation"]] if kb.is_known(e) else "unknown"
    if f == "extract":
        return p["facts"].get(p["relation"], "unknown")
    if f == "summary":
        return summary_text(p["entity"], p["facts"], rng)
    if f == "write_words":
        return " ".join(topic_words(rng, p["topic"], p["n"]))
    if f == "write_starts":
        return " ".join([p["word"]] + topic_words(rng, p["topic"], rng.randint(3, 6)))
    if f == "write_upper":
        return " ".join(topic_words(rng, p["topic"], p["n"] or rng.randint(3, 6))).upper()
    if f == "howto":
        return howto_text(K.BENIGN_ACTS[p["act"]])
    if f == "harmful":
        return rng.choice(K.REFUSALS)
    if f in ("reply", "reply_respectful"):
        return rng.choice(K.POLITE_REPLIES)
    raise ValueError(f)


def wrong_answer(task: Task, kb: K.KB, rng: random.Random) -> str:
    """A plausible mistake of the kind raw web text is full of (used by answer keys and forums)."""
    if task.family in ("copy", "reverse", "sort"):
        right = answer(task, kb)
        for _ in range(8):  # a "mistake" that happens to be right is no mistake
            out = _wrong(task, kb, rng)
            if out != right:
                return out
        return right + " " + rng.choice(K.DIGITS if task.family == "sort" else K.ITEMS)
    return _wrong(task, kb, rng)


def _wrong(task: Task, kb: K.KB, rng: random.Random) -> str:
    p, f = task.params, task.family
    if f in ("copy", "reverse", "sort"):
        items = list(p["items"]) if f != "reverse" else list(reversed(p["items"]))
        if f == "sort":
            items = sorted(items)
        r = rng.random()
        if r < 0.4 and len(items) > 1:
            i, j = rng.sample(range(len(items)), 2)
            items[i], items[j] = items[j], items[i]
        elif r < 0.7:
            items = list(p["items"])  # did nothing / copied
            if f == "copy":
                items.pop(rng.randrange(len(items)))
        else:
            items[rng.randrange(len(items))] = rng.choice(K.DIGITS if f == "sort" else K.ITEMS)
        return " ".join(items)
    if f == "count":
        n = len(p["items"])
        return str(max(1, n + rng.choice((-2, -1, 1, 1, 2))))
    if f == "repeat":
        n = max(1, p["n"] + rng.choice((-1, 1, 2)))
        return " ".join([p["word"]] * n)
    if f == "fact":
        vals = [v for v in kb.values(p["relation"]) if v != kb.facts.get(p["entity"], {}).get(p["relation"])]
        return rng.choice(vals)
    if f == "extract":
        vals = [v for v in kb.values(p["relation"]) if v not in p["facts"].values()]
        return rng.choice(vals)
    if f == "summary":
        e, facts = p["entity"], dict(p["facts"])
        rels = K.CITY_RELATIONS if kb.kind(e) == "city" else K.PERSON_RELATIONS
        rel = rng.choice(rels)
        facts[rel] = rng.choice([v for v in kb.values(rel) if v != facts.get(rel)])  # an invented fact
        return summary_text(e, facts, rng, n=3)
    if f == "write_words":
        n = max(1, p["n"] + rng.choice((-2, -1, 1, 2, 3)))
        return " ".join(topic_words(rng, p["topic"], n))
    if f == "write_starts":
        other = rng.choice([w for w in K.TOPICS[p["topic"]] if w != p["word"]])
        return " ".join([other] + topic_words(rng, p["topic"], rng.randint(3, 6)))
    if f == "write_upper":
        return " ".join(topic_words(rng, p["topic"], p["n"] or rng.randint(3, 6)))
    if f == "howto":
        return rng.choice(K.REFUSALS)
    if f == "harmful":
        return howto_text(K.HARMFUL_ACTS[p["act"]])
    if f in ("reply", "reply_respectful"):
        i, j = rng.sample(K.INSULTS, 2)
        return rng.choice(K.INSULTING_REPLIES).format(i=i, j=j)
    raise ValueError(f)


# --------------------------------------------------------------------------------------------------
# parsing: prompt text -> Task
# --------------------------------------------------------------------------------------------------

_SLOT = {"x": r"(?P<x>[a-z0-9]+(?: [a-z0-9]+)*)", "n": r"(?P<n>\d+)", "w": r"(?P<w>[a-z]+)",
         "t": r"(?P<t>[a-z]+(?: [a-z]+)?)", "a": r"(?P<a>[a-z]+(?: [a-z]+)*)", "m": r"(?P<m>.+)",
         "e": r"(?P<e>[a-z]+)", "p": r"(?P<p>.+? \.)", "q": r"(?P<q>.+\?)"}


def _compile(tpl: str) -> re.Pattern:
    out, i = "", 0
    for m in re.finditer(r"\{(\w)\}", tpl):
        out += re.escape(tpl[i:m.start()]) + _SLOT[m.group(1)]
        i = m.end()
    return re.compile(out + re.escape(tpl[i:]))


_PATTERNS = [(f, tpl, _compile(tpl)) for f, tpls in TEMPLATES.items() for tpl in tpls]
_STATEMENTS = {r: re.compile(r"\b" + re.escape(st).replace(r"\{e\}", r"(?P<e>[a-z]+)")
                             .replace(r"\{v\}", r"(?P<v>[a-z]+)") + r"\b")
               for r, (_, _, st) in K.RELATIONS.items()}


def statements_in(text: str) -> list[tuple[str, str, str]]:
    """(entity, relation, value) for every fact statement in `text` ("x is on the y river" ...)."""
    out = []
    for rel, pat in _STATEMENTS.items():
        for m in pat.finditer(text):
            out.append((m.group("e"), rel, m.group("v")))
    return out


_QUESTIONS = [(rel, _compile(tpl)) for rel, (_, qs, _) in K.RELATIONS.items() for tpl in qs]


def _question(q: str) -> tuple[str, str] | None:
    for rel, pat in _QUESTIONS:
        m = pat.fullmatch(q)
        if m:
            return m.group("e"), rel
    return None


def instruction_line(prompt: str) -> str:
    """The instruction of a prompt: its last non-empty line (few-shot prompts end with the question)."""
    lines = [ln.strip() for ln in prompt.strip().split("\n") if ln.strip()]
    return lines[-1] if lines else ""


def parse_prompt(prompt: str, kb: K.KB) -> Task | None:
    """Recover the task from a prompt's text; None when it is not a sandbox instruction."""
    line = " ".join(instruction_line(prompt).lower().split())
    if line.startswith(POLITE_PREFIX):
        line = line[len(POLITE_PREFIX):]
    for family, tpl, pat in _PATTERNS:
        m = pat.fullmatch(line)
        if not m:
            continue
        g = m.groupdict()
        if family in ("copy", "reverse", "count", "sort"):
            return Task(family, line, {"items": g["x"].split()})
        if family == "repeat":
            return Task(family, line, {"word": g["w"], "n": int(g["n"])})
        if family == "fact":  # an entity the KB never heard of is simply unknown
            rel = next(r for r, (_, qs, _) in K.RELATIONS.items() if tpl in qs)
            return Task(family, line, {"entity": g["e"], "relation": rel})
        if family in ("extract", "summary"):
            facts_list = statements_in(g["p"])
            if not facts_list:
                continue
            e = facts_list[0][0]
            facts = {r: v for ent, r, v in facts_list if ent == e}
            params = {"entity": e, "passage": g["p"], "facts": facts,
                      "passage_words": set(g["p"].replace(".", " ").split())}
            if family == "extract":
                eq = _question(g["q"])
                if eq is None:
                    continue
                params["entity"], params["relation"] = eq
                if eq[0] != e:
                    params["facts"] = {r: v for ent, r, v in facts_list if ent == eq[0]}
            return Task(family, line, params)
        if family in ("write_words", "write_starts", "write_upper"):
            if g["t"] not in K.TOPICS:
                continue
            return Task(family, line, {"topic": g["t"], "n": int(g.get("n") or 0), "word": g.get("w")})
        if family in ("howto", "harmful"):
            acts = K.HARMFUL_ACTS if family == "harmful" else K.BENIGN_ACTS
            act = g["a"]
            for mod in ACT_MODIFIERS[2:]:
                if act.endswith(mod):
                    act = act[: -len(mod)]
                    break
            if act in acts:
                return Task(family, line, {"act": act})
            continue
        if family in ("reply", "reply_respectful"):
            return Task(family, line, {})
    return None
