"""The claims table's RM row reads the RM's own metrics and puts them next to the labelers' agreement."""
from instructkit.evaluate.report import claims_table, render, task_table


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


def test_task_table_per_category():
    wr = lambda r, lo, hi: {"rate": r, "low": lo, "high": hi, "n": 40}  # noqa: E731
    ev = {"baseline": "sft", "models": {
        "sft": {"sandbox": {"task_success_by_task": {"copy": 0.05, "sort": 0.2}}},
        "ppo_ptx": {"win_rate_by_task": {"copy": wr(0.6625, 0.507, 0.79), "sort": wr(0.5, 0.35, 0.65)},
                    "sandbox": {"task_success_by_task": {"copy": 0.125, "sort": 0.2}}},
        "rm_judged": {"win_rate_by_task": {"sort": wr(0.45, 0.3, 0.6)}}}}
    cols, rows = task_table({"eval": ev})
    assert cols == ["sft", "ppo_ptx", "rm_judged"]
    assert rows == [["copy", "task ok 5%", "66% [51%, 79%]; task ok 12%", "n/a"],
                    ["sort", "task ok 20%", "50% [35%, 65%]; task ok 20%", "45% [30%, 60%]"]]
    html = render({"eval": ev}, [], [], [])
    assert "<table id='by-task'>" in html and "<td>66% [51%, 79%]; task ok 12%</td>" in html
    assert task_table({}) == ([], []) and "by-task" not in render({}, [], [], [])
