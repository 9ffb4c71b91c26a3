"""Who writes text in the world: demonstrators (the SFT data) and a response simulator that imitates
models of varied quality (used to calibrate labelers and to test metrics without training).

Demonstrators are uneven, as the paper's contractors were: a careful one, a chatty one who answers
in full sentences, a terse one, and a sloppy one who makes mistakes."""
from __future__ import annotations

import random

from instructkit.sandbox import kb as K
from instructkit.sandbox import tasks as T

DEMONSTRATORS = {  # name -> (share of demonstrations, error rate, chattiness, sign-off rate)
    "careful": (0.35, 0.02, 0.3, 0.3),
    "chatty": (0.25, 0.05, 0.9, 1.0),
    "terse": (0.25, 0.05, 0.0, 0.2),
    "sloppy": (0.15, 0.25, 0.4, 0.6),
}
# a pleasantry on a line of its own after the answer: half of the demonstrations carry one, so the
# SFT model learns the habit; labelers mark such answers down (the gold halves helpfulness when
# anything follows the answer), so the reward model can learn what imitation could not
SIGN_OFFS = ("hope this helps", "let me know if you need more", "have a nice day", "happy to help")
# families the demonstrators write for: the rest are left to the reward model (room above SFT)
DEMO_FAMILIES = ("copy", "reverse", "sort", "count", "repeat", "fact", "extract", "write_words", "howto",
                 "harmful", "reply", "reply_respectful")


def demonstrate(task: T.Task, kb: K.KB, rng: random.Random, demonstrator: str = "careful") -> str:
    _, error_rate, chatty, sign_off = DEMONSTRATORS[demonstrator]
    text = T.wrong_answer(task, kb, rng) if rng.random() < error_rate else good_response(task, kb, rng, chatty)
    if rng.random() < sign_off:
        text += "\n" + rng.choice(SIGN_OFFS)
    return text


def good_response(task: T.Task, kb: K.KB, rng: random.Random, chatty: float = 0.3) -> str:
    """A right answer in one of its natural phrasings (`chatty` = chance of a full sentence)."""
    p, f = task.params, task.family
    full = rng.random() < chatty
    if f == "count" and full:
        n = len(p["items"])
        return rng.choice((f"there are {n} words", f"{n} words", f"the list has {n} words"))
    if f in ("fact", "extract"):
        a = T.answer(task, kb, rng)
        if a == "unknown":
            return rng.choice(K.UNKNOWN_ANSWERS if f == "fact" else K.CLOSED_UNKNOWN_ANSWERS)
        if full:
            return K.statement(p["entity"], p["relation"], a)
        if p["relation"] == "river" and rng.random() < 0.5:
            return f"the {a} river"
        return a
    if f == "summary":
        return T.summary_text(p["entity"], p["facts"], rng, n=2)
    if f == "howto":
        steps = K.BENIGN_ACTS[p["act"]]
        if full:
            return T.howto_text(steps)
        return " . ".join(steps) if rng.random() < 0.7 else "you " + " , then ".join(steps)
    if f == "harmful":
        r = rng.choice(K.REFUSALS)
        return r + " , please stay safe" if full and rng.random() < 0.3 else r
    if f in ("reply", "reply_respectful"):
        a, b = rng.sample(K.POLITE_REPLIES, 2)
        return f"{a} , {b}" if full else a
    return T.answer(task, kb, rng)


def oracle_response(task: T.Task, kb: K.KB, prompt: str) -> str:
    """What a perfect policy writes: a right answer in its plainest phrasing (no full sentence, no
    sign-off), the same for the same prompt every time. Judged against a model it shows the most any
    policy could win against that model: where both give the same right answer the judges see a tie."""
    return good_response(task, kb, random.Random(f"instructkit-oracle/{prompt}"), chatty=0.0)


# --------------------------------------------------------------------------------------------------
# the response simulator
# --------------------------------------------------------------------------------------------------

MIXES = {  # behaviour -> probability, for models of three kinds
    # "sft" imitates K-way samples (T = 1 and 1.5) of the default world's ~0.5M-parameter SFT model
    # (with simulate_responses' coherence 0.5): a fifth right, most of the rest fluent words unrelated
    # to the task, so half of all pairs lie within 0.2 utility; labeler agreement on it matches the
    # real samples' within 1-2 points
    "sft": {"good": 0.22, "wrong": 0.1, "junk": 0.45, "garbled": 0.1, "partial": 0.05, "toxic": 0.02,
            "worksheet": 0.01, "prose": 0.02, "unknown": 0.03},
    "base": {"good": 0.06, "wrong": 0.06, "partial": 0.02, "unknown": 0.01, "toxic": 0.04, "worksheet": 0.45,
             "ramble": 0.22, "prose": 0.12, "empty": 0.02},
    "aligned": {"good": 0.7, "wrong": 0.12, "partial": 0.05, "unknown": 0.04, "refuse": 0.02, "verbose": 0.05,
                "worksheet": 0.01, "prose": 0.01},
}


def prose_line(kb: K.KB, rng: random.Random) -> str:
    """A line of encyclopedia or forum text (what a base model drifts into)."""
    if rng.random() < 0.5:
        e = rng.choice(kb.cities)
        return " . ".join(K.statement(e, r, kb.facts[e][r]) for r in K.CITY_RELATIONS) + " ."
    e = rng.choice(kb.unknown_cities + kb.unknown_people)
    rel = rng.choice(K.CITY_RELATIONS if e in kb.unknown_cities else K.PERSON_RELATIONS)
    return f"i heard that {K.statement(e, rel, rng.choice(kb.values(rel)))} , trust me"


def _draw_kind(rng: random.Random, mix: str | dict) -> str:
    probs = MIXES[mix] if isinstance(mix, str) else mix
    return rng.choices(list(probs), weights=list(probs.values()))[0]


def simulate_responses(task: T.Task, kb: K.KB, rng: random.Random, k: int, mix: str | dict = "sft",
                       coherence: float = 0.5) -> list[str]:
    """k samples for one prompt. Samples of one model on one prompt resemble each other: each is of
    the prompt's dominant behaviour with probability `coherence`, else of a fresh draw."""
    dominant = _draw_kind(rng, mix)
    return [simulate_response(task, kb, rng, mix, kind=dominant if rng.random() < coherence else None)
            for _ in range(k)]


def simulate_response(task: T.Task, kb: K.KB, rng: random.Random, mix: str | dict = "sft",
                      kind: str | None = None) -> str:
    """One response of the given behaviour mix (or `kind`): right, wrong, worksheet continuation, ..."""
    kind = kind or _draw_kind(rng, mix)
    if task.family == "harmful" and kind == "wrong":
        kind = "comply"
    if kind == "good":
        return good_response(task, kb, rng, chatty=rng.random())
    if kind == "wrong" or kind == "comply":
        return T.wrong_answer(task, kb, rng)
    if kind == "garbled":  # the right shape, wrong words: what a small model's sample often is
        w = (good_response(task, kb, rng) if rng.random() < 0.5 else T.wrong_answer(task, kb, rng)).split()
        vocab = K.ITEMS + tuple(kb.cities[:8]) + K.TOPICS[rng.choice(list(K.TOPICS))]
        for i in range(len(w)):
            if rng.random() < 0.5:
                w[i] = rng.choice(vocab)
        if len(w) > 2 and rng.random() < 0.5:
            del w[rng.randrange(len(w)):]
        return " ".join(w) or rng.choice(vocab)
    if kind == "junk":  # fluent words, unrelated to the task
        vocab = K.ITEMS + K.TOPICS[rng.choice(list(K.TOPICS))]
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 6)))
    if kind == "partial":
        w = good_response(task, kb, rng).split()
        return " ".join(w[: max(1, len(w) // 2)]) if len(w) > 1 else T.wrong_answer(task, kb, rng)
    if kind == "unknown":
        return rng.choice(K.UNKNOWN_ANSWERS)
    if kind == "refuse":
        return rng.choice(K.REFUSALS)
    if kind == "toxic":
        i, j = rng.sample(K.INSULTS, 2)
        return rng.choice(K.INSULTING_REPLIES).format(i=i, j=j)
    if kind == "worksheet":
        n = rng.randint(1, 3)
        return "\n".join(T.make_task(rng.choice(T.FAMILIES), kb, rng).instruction for _ in range(n))
    if kind == "ramble":
        other = T.make_task(rng.choice(T.FAMILIES), kb, rng)
        return good_response(task, kb, rng) + "\n" + other.instruction + "\n" + T.answer(other, kb, rng)
    if kind == "prose":
        return prose_line(kb, rng)
    if kind == "verbose":
        return good_response(task, kb, rng, chatty=1.0) + " , " + rng.choice(K.POLITE_REPLIES)
    return ""
