"""The headline claim in the report: `benchmarks/headline.py` (the `make bench` job) writes
headline.json, and the report's claims table shows the policy's win rates against the larger base
model, few-shot and bare. The benchmark itself runs end to end here on the tiny world."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import PYTHON, run_cli, subprocess_env  # noqa: E402
from instructkit.evaluate.report import claims_table  # noqa: E402
from sandbox_chain import tiny_chain  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[1]
HEAD = {"policy": {"name": "ppo_ptx", "params": 500_000}, "base": {"params": 4_000_000}, "shots": 4,
        "win_rate": {"rate": 0.82, "low": 0.787, "high": 0.849, "n": 600},
        "win_rate_bare": {"rate": 0.9, "low": 0.874, "high": 0.921, "n": 600},
        "same_size": {"params": 500_000, "win_rate": {"rate": 0.6, "low": 0.56, "high": 0.639, "n": 600},
                      "win_rate_bare": {"rate": 0.8, "low": 0.766, "high": 0.83, "n": 600}}}


def _row(summary: dict) -> str:
    return next(c for a, _, c in claims_table(summary) if a.startswith("Small aligned model"))


def test_claims_row_shows_both_win_rates():
    assert _row({}) == "measured by `make bench` (headline size), not in the demo"
    assert _row({"headline": HEAD}) == ("ppo_ptx (0.50M) vs a 8.0x larger base (4.00M): 82.0% [78.7%, 84.9%] vs "
                                        "few-shot (4 shots), 90.0% [87.4%, 92.1%] vs bare; vs its own base: "
                                        "60.0% [56.0%, 63.9%] few-shot, 80.0% [76.6%, 83.0%] bare")
    ceiling = {**HEAD, "ceiling": {"win_rate": {"rate": 0.76, "low": 0.724, "high": 0.792, "n": 600}}}
    assert _row({"headline": ceiling}) == _row({"headline": HEAD}) + (
        "; ceiling (an oracle answering every prompt right) 76.0% [72.4%, 79.2%] vs few-shot")
    bare = {"win_rate": HEAD["win_rate"]}  # only the required key
    assert _row({"headline": bare}) == "82.0% [78.7%, 84.9%] vs few-shot (? shots)"
    # a headline.json from before the rename of the bare figure still shows it
    old = {"win_rate": HEAD["win_rate"], "win_rate_prompted": HEAD["win_rate_bare"], "shots": 4}
    assert _row({"headline": old}) == "82.0% [78.7%, 84.9%] vs few-shot (4 shots), 90.0% [87.4%, 92.1%] vs bare"


def test_report_reads_headline_json(tmp_path, capsys):
    (tmp_path / "headline.json").write_text(json.dumps(HEAD))
    code, out, err = run_cli(["report", f"run={tmp_path}"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["headline"] == HEAD
    assert "82.0% [78.7%, 84.9%] vs few-shot" in out
    assert "82.0% [78.7%, 84.9%] vs few-shot" in (tmp_path / "report.html").read_text()


def test_headline_benchmark_end_to_end_on_the_tiny_world(tiny_chain, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cmd = [PYTHON, str(ROOT / "benchmarks" / "headline.py"), "--size", "tiny", "--policy", str(tiny_chain["sft"]),
           "--policy-base", str(tiny_chain["base"]), "--out", str(tmp_path / "h"), "--run", str(run), "--eval-seeds", "0,3", "--d-model", "32", "--d-ff", "64", "--layers", "2", "--heads", "2",
           "--seq-len", "128", "--batch", "8", "--steps", "12", "--shots", "2", "--n-prompts", "10"]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kb.json identical, demonstrations.jsonl identical, prompts/eval.jsonl identical" in proc.stdout
    head = json.loads((tmp_path / "h" / "headline.json").read_text())
    assert head["win_rate"]["n"] == 10 and head["win_rate_bare"]["n"] == 10 and head["shots"] == 2
    assert head["base"]["pretrain_tokens"] == 12 * 8 * 128 and head["policy"]["params"] > 0
    ev = json.loads((tmp_path / "h" / "eval" / "eval.json").read_text())["models"]
    # the policy's win rate is the base's loss rate, ties half
    assert abs(head["win_rate"]["rate"] + ev["base_fewshot"]["win_rate"]["rate"] - 1) < 1e-9
    assert abs(head["win_rate"]["low"] + ev["base_fewshot"]["win_rate"]["high"] - 1) < 1e-9
    # the same-size comparison: the policy against the model it was fine-tuned from, few-shot and bare
    assert ev["own_fewshot"]["fewshot"]["k"] == 2 and "fewshot" not in ev["own"]
    assert head["same_size"]["path"] == str(tiny_chain["base"]) and head["same_size"]["params"] < head["base"]["params"]
    assert abs(head["same_size"]["win_rate"]["rate"] + ev["own_fewshot"]["win_rate"]["rate"] - 1) < 1e-9
    assert abs(head["same_size"]["win_rate_bare"]["rate"] + ev["own"]["win_rate"]["rate"] - 1) < 1e-9
    assert "vs its own base" in proc.stdout
    # a second evaluation seed: its own eval run, every seed's figures kept, the first is the headline's
    assert head["eval_seed"] == 0 and set(head["by_seed"]) == {"0", "3"}
    assert head["by_seed"]["0"]["win_rate"] == head["win_rate"]
    assert head["by_seed"]["0"]["same_size"]["win_rate_bare"] == head["same_size"]["win_rate_bare"]
    ev3 = json.loads((tmp_path / "h" / "eval_seed3" / "instructkit.json").read_text())
    assert ev3["config"]["seed"] == 3
    ev3_models = json.loads((tmp_path / "h" / "eval_seed3" / "eval.json").read_text())["models"]
    assert abs(head["by_seed"]["3"]["win_rate"]["rate"] + ev3_models["base_fewshot"]["win_rate"]["rate"] - 1) < 1e-9
    assert "eval seed 3:" in proc.stdout
    # the ceiling: an oracle answering every prompt right, judged against the same samples
    from instructkit.evaluate.run import compare
    from instructkit.sandbox.world import World
    from instructkit.sandbox.writers import oracle_response
    world = World.load(head["world"])
    rows = [json.loads(line) for line in (tmp_path / "h" / "eval" / "samples.jsonl").read_text().splitlines()]
    oracle = [oracle_response(world.parse(r["prompt"]), world.kb, r["prompt"]) for r in rows]
    outcomes = compare("panel", world, [r["prompt"] for r in rows], oracle, [r["base_fewshot"] for r in rows], 0)
    c = head["ceiling"]
    assert c["win_rate"]["n"] == 10 and c["win_rate"]["rate"] == sum(outcomes) / 10
    assert c["win_rate"]["ties"] == sum(o == r["base_fewshot"] for o, r in zip(oracle, rows))
    assert set(c) == {"win_rate", "win_rate_bare", "vs_policy", "same_size"}
    assert head["by_seed"]["0"]["ceiling"] == c and head["by_seed"]["3"]["ceiling"]["win_rate"]["n"] == 10
    assert head["acceptance_reachable"] == (c["win_rate"]["rate"] >= 0.8 and c["win_rate"]["low"] > 0.7)
    assert "oracle vs base, few-shot" in proc.stdout
    assert json.loads((run / "headline.json").read_text()) == head
    assert "vs few-shot" in proc.stdout and "acceptance" in proc.stdout
    # a rerun skips every stage and gives the same figures
    again = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 0 and "already complete" in again.stdout
    assert json.loads((tmp_path / "h" / "headline.json").read_text())["win_rate"] == head["win_rate"]
    # another few-shot setting (or another policy) redoes the eval instead of reusing it
    other = subprocess.run([*cmd[:-3], "1", *cmd[-2:]], env=subprocess_env(), capture_output=True, text=True,
                           cwd=tmp_path)
    assert other.returncode == 0 and "redoing it" in other.stdout
    assert json.loads((tmp_path / "h" / "headline.json").read_text())["shots"] == 1
    # a --policy-base that is not a model: exit 2 before anything is built
    bad = subprocess.run([*cmd[:6], "--policy-base", str(tmp_path / "nope"), "--out", str(tmp_path / "h2"), *cmd[10:]],
                         env=subprocess_env(), capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "--policy-base" in bad.stderr and not (tmp_path / "h2").exists()
    bad = subprocess.run([*cmd[:9], str(tmp_path / "h3"), *cmd[10:], "--eval-seeds", "1,x"],
                         env=subprocess_env(), capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "--eval-seeds '1,x'" in bad.stderr and not (tmp_path / "h3").exists()
