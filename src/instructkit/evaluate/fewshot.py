"""Few-shot prompting of a base model, InstructGPT's "GPT-3 (prompted)" baseline made strong: each
eval prompt is preceded by K demonstrations written the way the pretraining corpus writes answer
keys, one `instruction\\nanswer\\n` pair after another (`sandbox/corpus.py: answer_key`,
`corpus/fewshot.jsonl`), and the model's answer ends at its first newline, where the next
instruction would start. The judge sees only the original prompt and that cut answer.

Pure functions: text in, text out."""
from __future__ import annotations

import random
from typing import Callable


def answer_key_pair(prompt: str, completion: str) -> str:
    """One demonstration as an answer key writes it: the instruction line, the answer line.
    A newline inside the answer would end it early, so it becomes a space."""
    return prompt.rstrip("\n") + "\n" + " ".join(completion.split("\n")) + "\n"


def pick_shots(prompt: str, demos: list[tuple[str, str]], k: int, seed: int) -> list[tuple[str, str]]:
    """K (prompt, completion) demonstrations for `prompt`, never `prompt` itself, drawn without
    replacement from a stream seeded by (seed, prompt): the same prompt gets the same shots in
    every run, whatever else is evaluated. One-line completions come first: an answer key shows them
    as written, while a later line (a sign-off, say) would be glued onto the answer; multi-line ones
    fill in only when too few one-line ones exist."""
    pool = [d for d in demos if d[0].rstrip("\n") != prompt.rstrip("\n")]
    one_line = [d for d in pool if "\n" not in d[1].strip("\n")]
    more = [d for d in pool if "\n" in d[1].strip("\n")]
    rng = random.Random(f"instructkit-fewshot/{seed}/{prompt}")
    shots = rng.sample(one_line, min(k, len(one_line)))
    return shots + rng.sample(more, min(k - len(shots), len(more)))


def fewshot_prompt(prompt: str, shots: list[tuple[str, str]], n_tokens: Callable[[str], int] | None = None,
                   budget: int = 0) -> tuple[str, int]:
    """(the text the model sees, shots kept). The shots come first, then `prompt` as one
    instruction line ending in a newline. With `n_tokens` and `budget`, the shots farthest from
    the question are dropped until the text fits in `budget` tokens (the model's positions minus
    the response budget); the prompt itself is never cut."""
    tail = prompt.rstrip("\n") + "\n"
    kept = list(shots)
    while True:
        text = "".join(answer_key_pair(p, c) for p, c in kept) + tail
        if not kept or n_tokens is None or budget <= 0 or n_tokens(text) <= budget:
            return text, len(kept)
        kept = kept[1:]


def cut_answer(continuation: str) -> str:
    """The answer is the continuation up to its first newline (the next instruction starts there)."""
    return continuation.split("\n", 1)[0]
