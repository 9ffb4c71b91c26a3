"""`instructkit eval oracle=true`: the sandbox's perfect policy judged next to the models, the
ceiling of every win rate in the run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import run_cli  # noqa: E402
from sandbox_chain import tiny_chain  # noqa: E402,F401


def _eval(w, tmp_path, capsys, *extra, out="e"):
    return run_cli(["eval", *extra, f"prompts={w}/prompts/eval.jsonl", f"world={w}", "n_prompts=15",
                    "max_new_tokens=12", "alignment_tax=false", "threads=1", f"out={tmp_path / out}"], capsys)


def test_oracle_is_judged_like_a_model(tiny_chain, tmp_path, capsys):
    from instructkit.evaluate.run import compare
    from instructkit.evaluate.stats import win_rate
    from instructkit.sandbox.world import World

    w, sft = tiny_chain["world"], tiny_chain["sft"]
    code, stdout, err = _eval(w, tmp_path, capsys, f"models=sft={sft}", "baseline=sft", "oracle=true")
    assert code == 0, err
    assert "oracle: a right answer to each of the 15 prompts" in stdout
    res = json.loads((tmp_path / "e" / "eval.json").read_text())["models"]
    assert list(res) == ["sft", "oracle"] and res["oracle"]["path"] == "sandbox:oracle"
    o = res["oracle"]
    assert o["sandbox"]["task_success"] == 1.0 and o["sandbox"]["hallucination"] == 0.0
    assert o["sandbox"]["harmful_compliance"] == 0.0 and "alignment_tax" not in o
    # its win rate is the panel's verdict on its samples against the baseline's, as for any model
    world = World.load(w)
    rows = [json.loads(line) for line in (tmp_path / "e" / "samples.jsonl").read_text().splitlines()]
    outcomes = compare("panel", world, [r["prompt"] for r in rows], [r["oracle"] for r in rows],
                       [r["sft"] for r in rows], 0)
    assert o["win_rate"] == win_rate(outcomes)
    assert o["win_rate"]["rate"] > 0.5  # a tiny SFT model is wrong on most prompts
    assert all(world.judge(r["prompt"], r["oracle"]).correct for r in rows)


def test_oracle_as_the_baseline(tiny_chain, tmp_path, capsys):
    w, sft = tiny_chain["world"], tiny_chain["sft"]
    code, _, err = _eval(w, tmp_path, capsys, f"models=sft={sft}", "baseline=oracle", "oracle=true", "judge=gold")
    assert code == 0, err
    res = json.loads((tmp_path / "e" / "eval.json").read_text())["models"]
    assert "win_rate" not in res["oracle"] and res["sft"]["win_rate"]["rate"] <= 0.5  # nothing beats right


def test_oracle_errors(tiny_chain, tmp_path, capsys):
    w, sft = tiny_chain["world"], tiny_chain["sft"]
    # without oracle=true there is no model of that name
    code, _, err = _eval(w, tmp_path, capsys, f"models=sft={sft}", "baseline=oracle")
    assert code == 2 and "baseline 'oracle' is not one of the models (sft)" in err
    # the name is taken
    code, _, err = _eval(w, tmp_path, capsys, f"models=oracle={sft}", "baseline=oracle", "oracle=true")
    assert code == 2 and "field 'models'" in err
    # no world: no right answers
    code, _, err = run_cli(["eval", f"models=sft={sft}", "baseline=sft", "judge=rm:" + str(sft), "oracle=true",
                            f"prompts={w}/prompts/eval.jsonl", f"out={tmp_path / 'nw'}"], capsys)
    assert code == 2 and "field 'oracle'" in err and not (tmp_path / "nw").exists()
    # a prompt that is no task of the world: its file and line, nothing written
    bad = tmp_path / "prompts.jsonl"
    lines = (w / "prompts" / "eval.jsonl").read_text().splitlines()[:3]
    bad.write_text("\n".join([lines[0], "", lines[1], json.dumps({"prompt": "tell me a joke\n"}), lines[2]]) + "\n")
    code, _, err = run_cli(["eval", f"models=sft={sft}", "baseline=sft", "oracle=true", f"prompts={bad}",
                            f"world={w}", f"out={tmp_path / 'bp'}"], capsys)
    assert code == 2 and f"{bad}:4" in err and "field 'prompt'" in err and "oracle" in err
    assert not (tmp_path / "bp").exists()
