"""The claims table's RM row reads the RM's own metrics and puts them next to the labelers' agreement."""
from instructkit.evaluate.report import claims_table


def test_rm_row_shows_accuracy_as_a_share_of_agreement():
    summary = {"rm": {"val_accuracy": 0.64, "val_gold_accuracy": 0.683},
               "labelers": {"train": 0.711, "heldout": 0.749}}
    row = next(c for a, _, c in claims_table(summary) if a.startswith("Labeler agreement"))
    # 0.64 / 0.711 = 0.9001...
    assert row == ("training pool 71.1%, held-out panel 74.9%; RM held-out accuracy 64.0% (0.90x of the training "
                   "pool's agreement), vs the gold ordering 68.3%")
    row = next(c for a, _, c in claims_table({}) if a.startswith("Labeler agreement"))
    assert "RM held-out accuracy n/a (n/a of" in row
