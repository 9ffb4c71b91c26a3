"""`benchmarks/headroom.py` end to end on the tiny chain: best-of-n picked by the gold utility and by
the RM, judged by the panel, with the best-of-n KL bound."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import PYTHON, subprocess_env  # noqa: E402
from sandbox_chain import tiny_chain  # noqa: E402,F401

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "headroom.py"


def test_headroom_table_and_json(tiny_chain, tmp_path):
    out = tmp_path / "headroom.json"
    r = subprocess.run([PYTHON, str(SCRIPT), "--run", str(tiny_chain["root"]), "--n", "4", "--n-prompts", "24",
                        "--json", str(out)], capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert r.returncode == 0, r.stderr
    assert "gold pick: win rate" in r.stdout
    d = json.loads(out.read_text())
    assert d["n_prompts"] == 24 and [row["n"] for row in d["rows"]] == [1, 2, 4]
    for row in d["rows"]:
        n = row["n"]
        assert row["kl_bound"] == math.log(n) - (n - 1) / n
        # the gold pick is the best of the same candidates the RM chooses among
        assert row["gold_pick"]["gold"] >= row["rm_pick"]["gold"] - 1e-9
        for pick in ("gold_pick", "rm_pick"):
            w = row[pick]["win_rate"]
            assert w["n"] == 24 and w["low"] <= w["rate"] <= w["high"]
    first = d["rows"][0]
    assert first["gold_pick"] == first["rm_pick"]  # one candidate: both pick it
    golds = [row["gold_pick"]["gold"] for row in d["rows"]]
    assert golds == sorted(golds)  # the best of a growing set never gets worse


def test_headroom_missing_inputs_exit_2(tmp_path):
    r = subprocess.run([PYTHON, str(SCRIPT), "--run", str(tmp_path / "nope")], capture_output=True, text=True,
                       env=subprocess_env(), timeout=120)
    assert r.returncode == 2 and "world not found" in r.stderr
