"""Agreement figures and label validation against hand-computed values (no database, no server)."""
from __future__ import annotations

import pytest

from instructkit.feedback.agreement import gold_accuracy, krippendorff_alpha, pair_orders, pairwise_agreement
from instructkit.feedback.labels import (TABLE3_FLAGS, LabelError, dense_ranks, flag_keys, validate_comparison,
                                         validate_ranking)

N = None
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 coders, 12 units,
# missing values; published: nominal .743, ordinal .815, interval .849, ratio .797
CODERS = [[1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
          [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
          [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
          [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N]]


@pytest.mark.parametrize("metric,published", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849),
                                              ("ratio", 0.797)])
def test_krippendorff_alpha_reproduces_the_published_example(metric, published):
    units = [list(u) for u in zip(*CODERS)]
    assert round(krippendorff_alpha(units, metric), 3) == published


def test_krippendorff_alpha_edge_cases():
    assert krippendorff_alpha([[1, 1], [2, 2], [3, 3]], "interval") == 1.0  # perfect agreement
    assert krippendorff_alpha([[1], [2, None]], "nominal") is None           # nothing pairable
    assert krippendorff_alpha([[3, 3], [3, 3]], "nominal") is None           # no variation: undefined
    # two coders, two units, always disagreeing on a binary value: o(0,1) = o(1,0) = 2, n0 = n1 = 2
    # D_o = 4/4 = 1, D_e = 2*2*2 / (4*3) = 2/3 -> alpha = 1 - 3/2 = -0.5
    assert krippendorff_alpha([[0, 1], [1, 0]], "nominal") == pytest.approx(-0.5)


def test_pairwise_agreement_by_hand_with_ties():
    """K = 3 outputs; pairs in order (0,1), (0,2), (1,2); -1 = first better, +1 = second, 0 = tie.
         ann [1, 1, 2] -> ( 0, -1, -1)
         bob [1, 2, 3] -> (-1, -1, -1)
    A tie against a preference is a disagreement: ann-bob agree on 2 of 3 pairs."""
    assert pair_orders([1, 1, 2]) == [0, -1, -1]
    assert pair_orders([3, 1, 2]) == [1, 1, -1]
    got = pairwise_agreement({"item": {"ann": [1, 1, 2], "bob": [1, 2, 3]}, "solo": {"ann": [1, 2]}})
    assert (got["overall"], got["agree"], got["total"]) == (pytest.approx(2 / 3), 2, 3)
    assert got["per_labeler"] == {"ann": {"agreement": pytest.approx(2 / 3), "agree": 2, "total": 3},
                                  "bob": {"agreement": pytest.approx(2 / 3), "agree": 2, "total": 3}}
    assert pairwise_agreement({})["overall"] is None


def test_gold_accuracy_scores_only_the_golds_strict_pairs():
    # gold [1, 1, 2]: pairs (0,2), (1,2) are strict; the labeler gets (0,2) right and (1,2) wrong
    assert gold_accuracy([1, 1, 2], [1, 3, 2]) == (1, 2)
    assert gold_accuracy([1, 2, 3], [1, 2, 3]) == (3, 3)


def test_ranking_validation():
    flags = list(TABLE3_FLAGS)
    ok = validate_ranking({"ranks": [1, 4, 4, 2], "likert": [7, 1, 1, 5], "flags": [{}, {"sexual": True}, {}, {}]},
                          4, flags, True)
    assert ok["ranks"] == [1, 3, 3, 2]  # made dense: only the order matters
    assert ok["flags"][1]["sexual"] is True and ok["flags"][0] == {f: False for f in flags}
    nr = validate_ranking({"not_rankable": True}, 3, flags, True)
    assert nr == {"ranks": [1, 1, 1], "likert": None, "flags": [{f: False for f in flags}] * 3, "not_rankable": True}
    for body, field in (({"ranks": [1, 2]}, "likert"), ({"likert": [1, 2]}, "ranks"),
                        ({"ranks": [1, 3], "likert": [1, 2]}, "ranks"), ({"ranks": [True, 2], "likert": [1, 2]}, "ranks"),
                        ({"ranks": [1, 2], "likert": [1, 2], "flags": [{"sexual": "yes"}, {}]}, "flags"),
                        ({"ranks": [1, 2], "likert": [1, 2], "not_rankable": "no"}, "not_rankable")):
        with pytest.raises(LabelError) as e:
            validate_ranking(body, 2, flags, True)
        assert e.value.field == field
    assert validate_ranking({"ranks": [2, 1]}, 2, flags, False)["likert"] is None  # Likert optional by setting
    assert validate_comparison({"choice": "tie"}) == {"choice": "tie"}
    with pytest.raises(LabelError):
        validate_comparison({"choice": "left"})
    assert dense_ranks([5, 5, 9, 1]) == [2, 2, 3, 1]


def test_every_table3_flag_has_its_own_shortcut():
    keys = flag_keys(list(TABLE3_FLAGS) + ["toxic", "continues_worksheet"])
    assert len(set(keys.values())) == len(keys) and all(len(k) == 1 for k in keys.values())
    # none collides with the ranking page's own keys
    assert not set(keys.values()) & set("jknrestqw1234567890?")
