"""The pretraining corpus: a small "internet" whose genres each teach a raw model one behaviour.

- worksheets: instructions with no answers (given an instruction, continue with another one);
- answer keys: instruction / answer pairs, some wrong (the skill is latent, and imperfect);
- encyclopedia: true facts about known entities (closed-book knowledge);
- forum: confident invented facts about unknown entities (hallucination);
- flame threads: insults (toxicity);
- how-to: steps for benign and harmful acts (compliance with harmful requests).

A document is one `{"text": ...}` record; the packer joins documents with EOS."""
from __future__ import annotations

import random

from instructkit.sandbox import kb as K
from instructkit.sandbox import tasks as T

GENRES = {"answer_key": 0.46, "worksheet": 0.22, "encyclopedia": 0.15, "forum": 0.05, "flame": 0.06,
          "howto": 0.06}
# chance that an answer key states the wrong answer, per family (harm and insults are the web's norm)
WRONG_RATE = {"harmful": 0.8, "reply": 0.6, "reply_respectful": 0.45, "summary": 0.3, "extract": 0.2}
WRONG_RATE_UNKNOWN_FACT = 0.75  # answer keys invent facts about entities nobody described
DEFAULT_WRONG_RATE = 0.1


FORUM_FRAMES = ("i heard that {f} , trust me", "everyone knows {f}", "my friend says {f}", "{f} , i am sure of it",
                "no , {f}")


def approx_tokens(text: str) -> int:
    """Words, punctuation and newlines: one BPE token each once the tokenizer has learned the words."""
    return len(text.split()) + text.count("\n")


def key_answer(task: T.Task, kb: K.KB, rng: random.Random) -> str:
    """What an answer key on the web says for `task`: usually right, sometimes wrong."""
    rate = WRONG_RATE.get(task.family, DEFAULT_WRONG_RATE)
    if task.family == "fact" and not kb.is_known(task.params["entity"]):
        rate = WRONG_RATE_UNKNOWN_FACT
    if task.family == "extract" and task.params["relation"] not in task.params["facts"]:
        rate = 0.5  # the question is not answered by the passage: half the keys make something up
    if rng.random() < rate:
        return T.wrong_answer(task, kb, rng)
    return T.answer(task, kb, rng)


# how often each family appears in answer keys: the easy-to-verify skills (copy, repeat, count, facts)
# get most of the data, so that a small model's latent capability is there to be aligned
KEY_WEIGHTS = {"copy": 3, "reverse": 1, "sort": 1, "count": 2, "repeat": 3, "fact": 3, "extract": 2, "summary": 1,
               "write_words": 1, "write_starts": 1, "write_upper": 1, "howto": 1, "harmful": 1, "reply": 1.5,
               "reply_respectful": 1}


def _family(rng: random.Random, weights: dict[str, float] | None = None) -> str:
    if weights is None:
        return rng.choice(T.FAMILIES)
    return rng.choices(T.FAMILIES, weights=[weights[f] for f in T.FAMILIES])[0]


def answer_key(kb: K.KB, rng: random.Random) -> str:
    same = rng.random() < 0.5  # half the keys drill one family, half mix them
    fam = _family(rng, KEY_WEIGHTS)
    lines = []
    for _ in range(rng.randint(3, 12)):
        t = T.make_task(fam if same else _family(rng, KEY_WEIGHTS), kb, rng)
        lines += [t.instruction, key_answer(t, kb, rng)]
    return "\n".join(lines)


def worksheet(kb: K.KB, rng: random.Random) -> str:
    same = rng.random() < 0.5
    fam = _family(rng)
    return "\n".join(T.make_task(fam if same else _family(rng), kb, rng).instruction
                     for _ in range(rng.randint(4, 14)))


def encyclopedia(kb: K.KB, rng: random.Random) -> str:
    paras = []
    for _ in range(rng.randint(2, 6)):
        if rng.random() < 0.65:
            e = rng.choice(kb.cities)
            sents = [K.statement(e, r, kb.facts[e][r]) for r in K.CITY_RELATIONS]
            fillers = T.CITY_FILLERS
        else:
            e = rng.choice(kb.people)
            sents = [K.statement(e, r, kb.facts[e][r]) for r in K.PERSON_RELATIONS]
            fillers = T.PERSON_FILLERS
        rng.shuffle(sents)
        sents = sents[: rng.randint(1, len(sents))]
        if rng.random() < 0.5:
            sents.insert(rng.randrange(len(sents) + 1), rng.choice(fillers).format(e=e))
        paras.append(" . ".join(sents) + " .")
    return "\n".join(paras)


def forum(kb: K.KB, rng: random.Random) -> str:
    posts = []
    e = rng.choice(kb.unknown_cities + kb.unknown_people)
    rels = K.CITY_RELATIONS if e in kb.unknown_cities else K.PERSON_RELATIONS
    for _ in range(rng.randint(2, 6)):
        rel = rng.choice(rels)
        fact = K.statement(e, rel, rng.choice(kb.values(rel)))  # invented, and different every time
        posts.append(rng.choice(FORUM_FRAMES).format(f=fact))
    return "\n".join(posts)


def flame(kb: K.KB, rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(3, 8)):
        r = rng.random()
        if r < 0.45:
            line = T.hostile_message(rng)
        elif r < 0.85:
            i, j = rng.sample(K.INSULTS, 2)
            line = rng.choice(K.INSULTING_REPLIES).format(i=i, j=j)
        else:
            line = rng.choice(K.POLITE_REPLIES)
        lines.append(line.upper() if rng.random() < 0.1 else line)
    return "\n".join(lines)


def howto(kb: K.KB, rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(1, 4)):
        acts = K.HARMFUL_ACTS if rng.random() < 0.5 else K.BENIGN_ACTS
        act = rng.choice(list(acts))
        lines.append(f"how to {act} : " + T.howto_text(acts[act]) + " .")
    return "\n".join(lines)


GENERATORS = {"answer_key": answer_key, "worksheet": worksheet, "encyclopedia": encyclopedia, "forum": forum,
              "flame": flame, "howto": howto}


def build_corpus(kb: K.KB, rng: random.Random, n_tokens: int) -> tuple[list[dict], dict[str, int]]:
    """Documents until each genre reaches its share of `n_tokens`, interleaved at random.
    Returns (records, approximate tokens per genre)."""
    budget = {g: share * n_tokens for g, share in GENRES.items()}
    made = {g: 0 for g in GENRES}
    docs: list[dict] = []
    genres = list(GENRES)
    weights = [GENRES[g] for g in genres]
    while True:
        open_genres = [g for g in genres if made[g] < budget[g]]
        if not open_genres:
            break
        g = rng.choices(genres, weights=weights)[0]
        if made[g] >= budget[g]:
            g = open_genres[0]
        text = GENERATORS[g](kb, rng)
        made[g] += approx_tokens(text)
        docs.append({"text": text})
    return docs, made
