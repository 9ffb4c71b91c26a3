"""Win rates with intervals, and Gao et al.'s over-optimisation fits. Pure functions."""
from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


def win_rate(outcomes: list[float], z: float = Z95) -> dict:
    """Win rate of A over B from per-comparison outcomes (1 = A wins, 0.5 = tie, 0 = B wins), with
    a Wilson score interval (ties count as half a win). {'rate', 'low', 'high', 'n', 'wins', 'ties'}."""
    n = len(outcomes)
    if n == 0:
        return {"rate": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0, "wins": 0, "ties": 0}
    p = sum(outcomes) / n
    # Wilson (1927): centre (p + z^2/2n) / (1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the interval holds p in exact arithmetic; at p = 0 or 1 rounding can put an end a hair inside it
    return {"rate": p, "low": max(0.0, min(p, centre - half)), "high": min(1.0, max(p, centre + half)), "n": n,
            "wins": sum(1 for o in outcomes if o == 1), "ties": sum(1 for o in outcomes if o == 0.5)}


def proportion(flags: list[bool], z: float = Z95) -> dict:
    """A rate with its Wilson interval."""
    return win_rate([1.0 if f else 0.0 for f in flags], z)


def mean_interval(values: list[float], z: float = Z95) -> dict:
    """Mean with a normal-approximation interval."""
    n = len(values)
    if n == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    m = float(np.mean(values))
    se = float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return {"mean": m, "low": m - z * se, "high": m + z * se, "n": n}


def fit_bon(d: np.ndarray, r: np.ndarray) -> tuple[float, float]:
    """Gao et al. 2022 best-of-n form R(d) = d (a - b d), d = sqrt(KL); least squares for (a, b).
    R is the gain over the initial policy (R(0) = 0)."""
    d, r = np.asarray(d, float), np.asarray(r, float)
    X = np.stack([d, -d * d], axis=1)
    (a, b), *_ = np.linalg.lstsq(X, r, rcond=None)
    return float(a), float(b)


def fit_rl(d: np.ndarray, r: np.ndarray) -> tuple[float, float]:
    """Gao et al. 2022 RL form R(d) = d (a - b log d), d = sqrt(KL) > 0; least squares for (a, b)."""
    d, r = np.asarray(d, float), np.asarray(r, float)
    keep = d > 0
    d, r = d[keep], r[keep]
    X = np.stack([d, -d * np.log(d)], axis=1)
    (a, b), *_ = np.linalg.lstsq(X, r, rcond=None)
    return float(a), float(b)


def bon_curve(d, a, b):
    d = np.asarray(d, float)
    return d * (a - b * d)


def rl_curve(d, a, b):
    d = np.asarray(d, float)
    return d * (a - b * np.log(np.maximum(d, 1e-12)))
