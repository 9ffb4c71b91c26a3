"""Simulated labelers: K-way rankings, 1-7 Likert scores and Table 3 flags over the gold utility.

Each labeler values the gold components with weights of their own, has a length preference, and
ranks by a Plackett-Luce draw: sort by (own utility + noise * Gumbel). Identical completions share
one draw, so they tie; distinct completions never tie. Two pools, as in the paper: a training pool
(pairwise agreement ~73%, the paper's 72.6%) and a disjoint held-out panel (~77%) for evaluation.

Agreement is measured on pairs of distinct completions whose gold utilities differ. Exact gold
ties (1-2% of distinct pairs on realistic samples: the gold utility has small length and
similarity terms precisely so that they are rare) are excluded, because no ordering of them is
"right": labelers still rank them, by their own weights and noise."""
from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

from instructkit.sandbox import gold as G
from instructkit.sandbox.gold import Judgement

# Gumbel scales, calibrated on K = 4..9 samples (T = 1 and 1.5) of the default world's SFT model
# (seed 0: 73.0% / 77.3%), and re-measured on the simulator's look-alike mix by the tests
TRAIN_NOISE = 0.13
PANEL_NOISE = 0.07


@dataclass(frozen=True)
class Labeler:
    name: str
    w_helpful: float
    w_honest: float
    w_harmless: float
    length_pref: float   # utility per log(1 + words): > 0 likes longer answers
    noise: float         # Gumbel scale of the Plackett-Luce draw (0 = ranks by own utility)
    flag_error: float = 0.03  # chance of flipping each boolean flag

    def own_utility(self, j: Judgement, response: str) -> float:
        base = G.W_HELPFUL * j.helpful + G.W_HONEST * j.honest + G.W_HARMLESS * j.harmless
        fine = j.utility - base  # the gold's length and similarity terms
        return (self.w_helpful * j.helpful + self.w_honest * j.honest + self.w_harmless * j.harmless + fine
                + self.length_pref * math.log1p(len(response.split())))

    def rank(self, world, prompt: str, completions: list[str], rng) -> list[int]:
        """Dense ranks, 1 = best; equal ranks only for identical completions."""
        scores = self._noisy(world, prompt, completions, rng)
        order = sorted(set(scores.values()), reverse=True)
        return [order.index(scores[c]) + 1 for c in completions]

    def _noisy(self, world, prompt, completions, rng) -> dict[str, float]:
        scores = {}
        for c in completions:
            if c not in scores:
                u = self.own_utility(world.judge(prompt, c), c)
                scores[c] = u + self.noise * _gumbel(rng)
        return scores

    def likert(self, world, prompt: str, completions: list[str], rng) -> list[int]:
        """1-7 overall quality: helpfulness, halved when dishonest, near 1 when harmful or toxic."""
        out = []
        for c in completions:
            j = world.judge(prompt, c)
            q = j.helpful * (0.5 + 0.5 * j.honest) * (0.1 + 0.9 * j.harmless)
            x = 1 + 6 * q + (0.5 + 2 * self.noise) * _normal(rng)
            out.append(int(min(7, max(1, round(x)))))
        return out

    def flags(self, world, prompt: str, completions: list[str], rng) -> list[dict]:
        out = []
        for c in completions:
            f = world.judge(prompt, c).flags()
            out.append({k: (not v if isinstance(v, bool) and _uniform(rng) < self.flag_error else v)
                        for k, v in f.items()})
        return out


def _uniform(rng) -> float:
    return rng.random()


def _gumbel(rng) -> float:
    u = _uniform(rng)
    return -math.log(-math.log(min(max(u, 1e-12), 1 - 1e-12)))


def _normal(rng) -> float:
    return rng.gauss(0.0, 1.0) if isinstance(rng, random.Random) else float(rng.normal())


def make_pool(name: str, n: int, noise: float, seed: int, flag_error: float) -> list[Labeler]:
    """n labelers with their own tastes: weights within +-30% of the gold's, some like length."""
    rng = random.Random(f"instructkit-labelers/{name}/{seed}")
    out = []
    for i in range(n):
        out.append(Labeler(
            name=f"{name}-{i:02d}",
            w_helpful=G.W_HELPFUL * rng.uniform(0.7, 1.3),
            w_honest=G.W_HONEST * rng.uniform(0.7, 1.3),
            w_harmless=G.W_HARMLESS * rng.uniform(0.7, 1.3),
            length_pref=rng.choice((0.0, 0.0, 0.05, 0.1, -0.05)),
            noise=noise * rng.uniform(0.85, 1.15),
            flag_error=flag_error))
    return out


TRAIN_POOL = make_pool("train", 10, TRAIN_NOISE, 0, flag_error=0.04)
HELDOUT_PANEL = make_pool("panel", 6, PANEL_NOISE, 1, flag_error=0.02)
POOLS = {"train": TRAIN_POOL, "heldout": HELDOUT_PANEL}


def pool(name_or_list) -> list[Labeler]:
    """"train" (the training pool), "heldout" (the evaluation panel), or a list of Labelers as is."""
    if isinstance(name_or_list, str):
        if name_or_list not in POOLS:
            raise ValueError(f"unknown labeler pool {name_or_list!r}; expected one of {', '.join(POOLS)}")
        return POOLS[name_or_list]
    return list(name_or_list)


_pool = pool  # the functions below take a parameter named `pool`


def label_records(world, prompts: list[str], completions_per_prompt: list[list[str]], pool="train",
                  seed: int = 0, tasks: list[str] | None = None) -> list[dict]:
    """K-way ranking records in the data contract: {"prompt", "completions", "ranks", "labeler",
    "likert", "flags"} (+ "task", the family the prompt belongs to). One labeler per prompt."""
    labelers = _pool(pool)
    rng = random.Random(f"instructkit-label/{seed}")
    out = []
    for i, (prompt, comps) in enumerate(zip(prompts, completions_per_prompt, strict=True)):
        lab = labelers[rng.randrange(len(labelers))]
        rec = {"prompt": prompt, "completions": list(comps), "ranks": lab.rank(world, prompt, comps, rng),
               "labeler": lab.name, "likert": lab.likert(world, prompt, comps, rng),
               "flags": lab.flags(world, prompt, comps, rng)}
        rec["task"] = tasks[i] if tasks is not None else world.judge(prompt, comps[0]).task
        out.append(rec)
    return out


def agreement(world, prompts: list[str], completions_per_prompt: list[list[str]], pool="train",
              seed: int = 0) -> dict:
    """Pairwise agreement between labelers of a pool: every labeler ranks every K-way item; over all
    labeler pairs, the share of completion pairs (distinct gold utility) they order the same way.
    Returns {"agreement", "pairs", "gold_ties_excluded", "labeler_pairs"}."""
    labelers = _pool(pool)
    rng = random.Random(f"instructkit-agreement/{seed}")
    agree = total = ties = 0
    for prompt, comps in zip(prompts, completions_per_prompt, strict=True):
        gold = [world.utility(prompt, c) for c in comps]
        ranks = [lab.rank(world, prompt, comps, rng) for lab in labelers]
        for i, j in itertools.combinations(range(len(comps)), 2):
            if abs(gold[i] - gold[j]) < 1e-9:
                ties += comps[i] != comps[j]
                continue
            for a, b in itertools.combinations(range(len(labelers)), 2):
                da, db = ranks[a][i] - ranks[a][j], ranks[b][i] - ranks[b][j]
                agree += (da > 0) == (db > 0)
                total += 1
    n_lab_pairs = len(labelers) * (len(labelers) - 1) // 2
    return {"agreement": agree / total if total else float("nan"), "pairs": total // max(1, n_lab_pairs),
            "gold_ties_excluded": ties, "labeler_pairs": n_lab_pairs}


def gold_accuracy(world, prompts, completions_per_prompt, pool="train", seed: int = 0) -> float:
    """Share of distinct-utility pairs a pool's labelers order as the gold utility does."""
    labelers = _pool(pool)
    rng = random.Random(f"instructkit-goldacc/{seed}")
    right = total = 0
    for prompt, comps in zip(prompts, completions_per_prompt, strict=True):
        gold = [world.utility(prompt, c) for c in comps]
        for lab in labelers:
            r = lab.rank(world, prompt, comps, rng)
            for i, j in itertools.combinations(range(len(comps)), 2):
                if abs(gold[i] - gold[j]) < 1e-9:
                    continue
                right += (r[i] < r[j]) == (gold[i] > gold[j])
                total += 1
    return right / total if total else float("nan")
