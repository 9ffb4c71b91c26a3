"""How well a labeler that is not a person (a spec, an AI judge) agrees with people, the sandbox's
held-out panel, or the sandbox's gold ordering — in the figures the labeling app reports for people
(instructkit.feedback.agreement): pairwise agreement over every output pair (orders: i better, j
better, tie) and accuracy on the pairs the reference strictly orders (chance = 50%)."""
from __future__ import annotations

import random

from instructkit.feedback.agreement import gold_accuracy, pair_orders, pairwise_agreement


def _key(rec: dict) -> tuple:
    return (rec["prompt"], tuple(sorted(rec["completions"])))


def align(ours: list[dict], theirs: list[dict]) -> list[tuple[list[int], list[int]]]:
    """(our ranks, their ranks in our completion order) for every item both ranked; items match by
    prompt and the set of completions, whatever order each side listed them in."""
    index = {}
    for rec in theirs:
        index.setdefault(_key(rec), rec)
    out = []
    for rec in ours:
        other = index.get(_key(rec))
        if other is None:
            continue
        by_text: dict[str, list[int]] = {}
        for c, r in zip(other["completions"], other["ranks"]):
            by_text.setdefault(c, []).append(r)
        out.append((list(rec["ranks"]), [by_text[c].pop(0) for c in rec["completions"]]))
    return out


def compare(ours: list[dict], theirs: list[dict]) -> dict:
    """{"items", "pairs", "agreement" (app figure), "strict_pairs", "strict_accuracy"}."""
    pairs = align(ours, theirs)
    pw = pairwise_agreement({i: {"a": a, "b": b} for i, (a, b) in enumerate(pairs)})
    right = total = ordered = 0
    for a, b in pairs:
        r, t = gold_accuracy(b, a)
        right, total = right + r, total + t
        ordered += sum(x != 0 and y != 0 for x, y in zip(pair_orders(a), pair_orders(b)))
    return {"items": len(pairs), "pairs": pw["total"], "agreement": pw["overall"], "strict_pairs": total,
            "strict_accuracy": right / total if total else None,
            # a labeler that ties a pair abstains on it: how often it does not, and how right it is then
            "decided": ordered / total if total else None, "accuracy_when_decided": right / ordered if ordered else None}


def sandbox_agreement(world, records: list[dict], seed: int = 0) -> dict:
    """A labeler's records against the sandbox's held-out panel and gold utility, next to the same
    figures for the panel itself and for a random labeler (the floor)."""
    from instructkit.data.records import scores_to_ranks
    from instructkit.sandbox import labelers as L

    prompts = [r["prompt"] for r in records]
    comps = [r["completions"] for r in records]
    panel = L.label_records(world, prompts, comps, "heldout", seed=seed)
    gold = [{"prompt": p, "completions": c, "ranks": scores_to_ranks([round(world.utility(p, x), 9) for x in c])}
            for p, c in zip(prompts, comps)]
    rng = random.Random(f"instructkit-random-labeler/{seed}")
    rand = [{"prompt": p, "completions": c, "ranks": rng.sample(range(1, len(c) + 1), len(c))}
            for p, c in zip(prompts, comps)]
    within = L.agreement(world, prompts, comps, "heldout", seed=seed)["agreement"]
    return {"items": len(records),
            "vs_panel": compare(records, panel), "vs_gold": compare(records, gold),
            "panel_vs_gold": compare(panel, gold), "random_vs_panel": compare(rand, panel),
            "random_vs_gold": compare(rand, gold), "panel_internal_agreement": within}


def _pct(x) -> str:
    return "  n/a" if x is None else f"{100 * x:.1f}%"


def format_sandbox_agreement(a: dict, who: str) -> str:
    return "\n".join([
        f"agreement on {a['items']} items ({a['vs_panel']['pairs']} output pairs):",
        f"  {who} vs held-out panel: {_pct(a['vs_panel']['agreement'])} pairwise "
        f"(random labeler {_pct(a['random_vs_panel']['agreement'])}; panel members with each other "
        f"{_pct(a['panel_internal_agreement'])} on distinct-utility pairs)",
        f"  {who} vs gold ordering: {_pct(a['vs_gold']['strict_accuracy'])} of {a['vs_gold']['strict_pairs']} strictly "
        f"ordered pairs (chance 50%, random labeler {_pct(a['random_vs_gold']['strict_accuracy'])}, "
        f"the panel {_pct(a['panel_vs_gold']['strict_accuracy'])})",
        f"  {who} orders {_pct(a['vs_gold']['decided'])} of those pairs (ties on the rest); when it does, it agrees "
        f"with gold on {_pct(a['vs_gold']['accuracy_when_decided'])} and with the panel on "
        f"{_pct(a['vs_panel']['accuracy_when_decided'])}",
    ])
