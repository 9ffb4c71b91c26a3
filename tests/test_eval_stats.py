"""Win-rate intervals against a hand-computed binomial case; ties as half; Gao et al. fits."""
import math

import numpy as np
import pytest

from instructkit.evaluate.stats import bon_curve, fit_bon, fit_rl, mean_interval, proportion, rl_curve, win_rate


def test_wilson_interval_binomial_85_of_100():
    # p = 0.85, n = 100, z = 1.96: centre = (0.85 + 0.019208) / 1.038415 = 0.837050,
    # half = 1.96 * sqrt(0.001275 + 0.00009604) / 1.038415 = 0.069888 -> (0.76716, 0.90694)
    r = win_rate([1.0] * 85 + [0.0] * 15)
    assert r["rate"] == pytest.approx(0.85)
    assert r["low"] == pytest.approx(0.76716, abs=2e-5)
    assert r["high"] == pytest.approx(0.90694, abs=2e-5)
    assert r["n"] == 100 and r["wins"] == 85 and r["ties"] == 0


def test_ties_count_half():
    r = win_rate([1.0, 0.5, 0.5, 0.0])
    assert r["rate"] == pytest.approx(0.5)
    assert r["ties"] == 2 and r["wins"] == 1
    # 3 wins + 2 ties of 5 = 4 / 5
    assert win_rate([1, 1, 1, 0.5, 0.5])["rate"] == pytest.approx(0.8)


def test_interval_edges_and_empty():
    r = win_rate([1.0] * 10)
    assert r["high"] == pytest.approx(1.0) and r["low"] == pytest.approx(10 / (10 + 1.959963984540054 ** 2), abs=1e-9)
    assert math.isnan(win_rate([])["rate"])
    # a clean sweep: the interval ends exactly at the rate (30 of 30 once rounded to 0.9999999999999999,
    # a negative error bar for the report's plot)
    for n in (10, 30, 600):
        assert win_rate([1.0] * n)["high"] == 1.0 and win_rate([0.0] * n)["low"] == 0.0
    assert proportion([True, False])["rate"] == 0.5


def test_mean_interval():
    m = mean_interval([1.0, 2.0, 3.0])
    # sd = 1, se = 1/sqrt(3) = 0.577350, half = 1.959964 * 0.577350 = 1.131586
    assert m["mean"] == 2.0
    assert m["high"] - m["mean"] == pytest.approx(1.131586, abs=1e-5)


def test_gao_fits_recover_parameters():
    d = np.linspace(0.1, 4, 30)
    a, b = fit_bon(d, bon_curve(d, 0.8, 0.15))
    assert (a, b) == (pytest.approx(0.8), pytest.approx(0.15))
    a, b = fit_rl(d, rl_curve(d, 0.5, 0.2))
    assert (a, b) == (pytest.approx(0.5), pytest.approx(0.2))
    # the bon form peaks at d* = a / 2b
    assert float(np.argmax(bon_curve(np.linspace(0, 5, 501), 0.8, 0.2))) / 100 == pytest.approx(2.0)
