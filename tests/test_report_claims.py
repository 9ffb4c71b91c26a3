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


def test_ppo_ptx_row_shows_the_oracle_ceiling_when_evaluated():
    wr = lambda r, lo, hi: {"rate": r, "low": lo, "high": hi, "n": 600}  # noqa: E731
    models = {"sft": {"gold_utility": {"mean": 2.34}},
              "ppo_ptx": {"win_rate": wr(0.661, 0.622, 0.698), "gold_utility": {"mean": 2.536}},
              "ppo": {"win_rate": wr(0.635, 0.595, 0.673), "gold_utility": {"mean": 2.6}}}
    rows = {a: c for a, _, c in claims_table({"eval": {"models": models}})}
    assert rows["PPO-ptx preferred to SFT (held-out panel)"] == ("PPO-ptx vs SFT: 66.1% [62.2%, 69.8%], gold utility "
                                                                 "2.536 vs SFT 2.340")
    models["oracle"] = {"win_rate": wr(0.85, 0.819, 0.876), "gold_utility": {"mean": 2.997}}
    rows = {a: c for a, _, c in claims_table({"eval": {"models": models}})}
    assert rows["PPO-ptx preferred to SFT (held-out panel)"] == (
        "PPO-ptx vs SFT: 66.1% [62.2%, 69.8%], gold utility 2.536 vs SFT 2.340; ceiling (an oracle answering every "
        "prompt right) 85.0% [81.9%, 87.6%], gold 2.997")
    assert "oracle" not in rows["PPO preferred to SFT (held-out panel)"]
