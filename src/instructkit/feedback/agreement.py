"""Agreement between labelers: pure functions over plain Python values (no database).

- pairwise agreement (InstructGPT §5.2 / Appendix B: 72.6 ± 1.5% among training labelers): for every
  item two labelers both ranked and every pair of its outputs (i, j), do they order (i, j) the same
  way? An order is one of "i better", "j better", "tie"; agreement is the share of equal orders.
  Per labeler: the same share over the pairs that labeler shares with anyone else.
- Krippendorff's alpha: chance-corrected agreement for any number of coders with missing values;
  nominal, ordinal, interval or ratio distance (Krippendorff 2011, "Computing Krippendorff's
  Alpha-Reliability"). We report it for Likert scores (interval) and pairwise orders (nominal).
- gold accuracy: the share of a gold item's strictly ordered pairs a labeler orders as the gold does."""
from __future__ import annotations

import itertools
from collections import defaultdict


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def pair_orders(ranks: list[int]) -> list[int]:
    """Per output pair (i < j), in itertools.combinations order: -1 i better, +1 j better, 0 tie."""
    return [_sign(ranks[i] - ranks[j]) for i, j in itertools.combinations(range(len(ranks)), 2)]


def pairwise_agreement(items: dict) -> dict:
    """items: {item: {labeler: ranks}} (ranks of one item all have the same length K).

    -> {"overall": share or None, "agree": n, "total": n,
        "per_labeler": {labeler: {"agreement", "agree", "total"}}}"""
    agree = total = 0
    per = defaultdict(lambda: [0, 0])
    for by_labeler in items.values():
        orders = {lab: pair_orders(r) for lab, r in by_labeler.items()}
        for a, b in itertools.combinations(sorted(orders), 2):
            same = sum(x == y for x, y in zip(orders[a], orders[b], strict=True))
            n = len(orders[a])
            agree, total = agree + same, total + n
            for lab in (a, b):
                per[lab][0] += same
                per[lab][1] += n
    return {"overall": agree / total if total else None, "agree": agree, "total": total,
            "per_labeler": {lab: {"agreement": s / n if n else None, "agree": s, "total": n}
                            for lab, (s, n) in sorted(per.items())}}


def gold_accuracy(gold_ranks: list[int], ranks: list[int]) -> tuple[int, int]:
    """(pairs ordered as the gold, gold's strictly ordered pairs); gold ties are not scored."""
    right = total = 0
    for g, r in zip(pair_orders(gold_ranks), pair_orders(ranks), strict=True):
        if g != 0:
            total += 1
            right += g == r
    return right, total


def _delta2(metric: str, values: list, n_c: dict):
    if metric == "nominal":
        return lambda c, k: float(c != k)
    if metric == "interval":
        return lambda c, k: float(c - k) ** 2
    if metric == "ratio":
        return lambda c, k: ((c - k) / (c + k)) ** 2 if c + k else 0.0
    if metric == "ordinal":
        rank = {v: i for i, v in enumerate(values)}

        def ordinal(c, k):
            lo, hi = sorted((rank[c], rank[k]))
            between = sum(n_c[values[g]] for g in range(lo, hi + 1))
            return (between - (n_c[c] + n_c[k]) / 2) ** 2
        return ordinal
    raise ValueError(f"unknown metric {metric!r}; expected nominal, ordinal, interval or ratio")


def krippendorff_alpha(units: list[list], metric: str = "interval") -> float | None:
    """units: one list per unit of the values coders gave it (None = missing; coder order does not
    matter). Units with fewer than two values are not pairable and are ignored. None when there is
    no pairable unit or no variation at all (alpha undefined)."""
    # coincidence matrix: each ordered pair of values within a unit adds 1 / (m_u - 1)
    o = defaultdict(float)
    for unit in units:
        vals = [v for v in unit if v is not None]
        m = len(vals)
        if m < 2:
            continue
        for a, b in itertools.permutations(range(m), 2):
            o[(vals[a], vals[b])] += 1.0 / (m - 1)
    if not o:
        return None
    n_c = defaultdict(float)
    for (c, _k), w in o.items():
        n_c[c] += w
    n = sum(n_c.values())
    values = sorted(n_c)
    d2 = _delta2(metric, values, n_c)
    d_o = sum(w * d2(c, k) for (c, k), w in o.items()) / n
    d_e = sum(n_c[c] * n_c[k] * d2(c, k) for c in values for k in values) / (n * (n - 1))
    if d_e == 0:
        return None
    return 1.0 - d_o / d_e
