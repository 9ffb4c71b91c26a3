"""`instructkit spec run | label | agree` end to end on tiny models: pass rates per check and workflow
with failing examples, the baseline regression gate's exit codes, ranking records that `instructkit
rm` trains on, and the gate's arithmetic on hand-made reports."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from instructkit import data as datalib
from instructkit.cli import main
from instructkit.feedback_ai.backends import LocalModel
from instructkit.feedback_ai.run import gate
from instructkit.feedback_ai.spec import load_spec
from instructkit.generation import SamplingParams

torch.set_num_threads(1)

SENTENCES = ["the cat is red .", "the dog is blue and very old .", "a bird can sing .", "the sun is hot .",
             "my fish is old and slow and grey .", "the moon is far .", "one tree is big .", "a ship is slow ."]


from conftest import fit_tiny_gpt2  # noqa: E402


def build_tiny_model(out: Path, seed: int, steps: int = 40, sentences: list[str] = SENTENCES) -> Path:
    """A tiny GPT-2 fitted for a few steps on short sentences, so that samples have words of varied length."""
    return fit_tiny_gpt2(out, seed, sentences, steps, prefix="say something\n")


PROMPTS = [f"say something about the {w}\n" for w in ("cat", "dog", "bird", "sun", "fish", "moon", "tree", "ship",
                                                       "sea", "sky", "hat", "box", "rain", "wind", "road", "king")]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("specrun")
    a = build_tiny_model(root / "a", seed=0)
    b = build_tiny_model(root / "b", seed=1, steps=10)
    # references = model a's greedy answers: a passes `equals_reference` everywhere, b (almost) nowhere
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0)
    refs = [s[0] for s in LocalModel(str(a)).complete(PROMPTS[:6], 1, greedy)]
    rows = [{"prompt": p, "task": "chat", "reference": r} for p, r in zip(PROMPTS[:6], refs)]
    rows += [{"prompt": p, "task": "other"} for p in PROMPTS[6:]]
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = root / "spec.yaml"
    spec.write_text(textwrap.dedent("""
        name: tiny
        prompts: prompts.jsonl
        threshold: 0.25
        workflows:
          replies:
            prompts: {task: chat}
            checks:
              same_as_v1: {equals_reference: true}
              short: {max_words: 6, weight: 0.5}
          chatter:
            prompts: {task: [chat, other]}
            checks:
              mentions_the: {contains: "the"}
              one_sentence: {max_sentences: 1}
    """))
    return {"root": root, "a": str(a), "b": str(b), "prompts": str(prompts), "spec": str(spec)}


def run_args(env, model, *extra):
    return ["spec", "run", "--spec", env["spec"], "--model", model, "--max-new-tokens", "16", "--threads", "1", *extra]


def test_spec_run_prints_pass_rates_per_check_and_workflow_with_failing_examples(env, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    assert main(run_args(env, env["b"], "--json", str(report_path))) == 0  # no baseline, no minimums: no gate
    out = capsys.readouterr().out
    for text in ("spec tiny:", "replies (all checks)", "  same_as_v1", "  short", "chatter (all checks)",
                 "  mentions_the", "overall (all checks)", "failing examples", "equals_reference:", "gate: passed"):
        assert text in out, text
    full = json.loads(report_path.read_text())
    report = full["report"]
    assert report["checks"]["replies/same_as_v1"]["n"] == 6 and report["checks"]["chatter/mentions_the"]["n"] == 16
    assert report["workflows"]["chatter"]["n"] == 16 and len(report["results"]) == 6 + 16
    assert report["checks"]["replies/same_as_v1"]["pass_rate"] < 0.5  # model b is not model a
    row = report["results"][0]
    assert set(row["checks"]) == {"same_as_v1", "short"} and isinstance(row["response"], str)
    # recompute one check's pass rate from the per-response rows
    rows = [r for r in report["results"] if r["workflow"] == "chatter"]
    assert report["checks"]["chatter/mentions_the"]["passed"] == sum(r["checks"]["mentions_the"] for r in rows)


def test_baseline_gate_exit_codes(env, tmp_path, capsys):
    # the same version twice: no change, exit 0
    assert main(run_args(env, env["a"], "--baseline", env["a"])) == 0
    out = capsys.readouterr().out
    assert "gate: passed" in out and "+0.0" in out
    # b against a: `same_as_v1` falls from 100% far beyond the 25-point threshold -> exit 1
    report_path = tmp_path / "gate.json"
    assert main(run_args(env, env["b"], "--baseline", env["a"], "--json", str(report_path))) == 1
    out = capsys.readouterr().out
    assert "GATE FAIL replies/same_as_v1: pass rate fell" in out and "gate: FAILED" in out
    full = json.loads(report_path.read_text())
    assert full["baseline"]["checks"]["replies/same_as_v1"]["pass_rate"] == 1.0
    assert not full["gate"]["passed"] and "replies/same_as_v1" in [f["check"] for f in full["gate"]["failures"]]
    # a threshold that tolerates any drop: exit 0
    assert main(run_args(env, env["b"], "--baseline", env["a"], "--threshold", "1")) == 0
    assert "gate: passed" in capsys.readouterr().out


def test_gate_arithmetic_on_hand_made_reports(tmp_path):
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(textwrap.dedent("""
        threshold: 0.10
        workflows:
          w:
            prompts: [p]
            checks:
              a: {max_words: 3}
              b: {max_words: 3, max_drop: 0.0}
              c: {max_words: 3, min_pass_rate: 0.9}
    """))
    spec = load_spec(str(spec_path))

    def report(a, b, c):
        return {"checks": {"w/a": {"pass_rate": a}, "w/b": {"pass_rate": b}, "w/c": {"pass_rate": c}}}
    base = report(0.80, 0.50, 0.95)
    assert gate(spec, report(0.70, 0.50, 0.95), base) == []              # a: exactly 10 points, allowed
    assert [f.check for f in gate(spec, report(0.69, 0.50, 0.95), base)] == ["w/a"]
    assert [f.check for f in gate(spec, report(0.90, 0.49, 0.95), base)] == ["w/b"]   # b allows no drop
    assert [f.check for f in gate(spec, report(0.90, 0.60, 0.85), None)] == ["w/c"]   # below its minimum
    assert gate(spec, report(0.90, 0.60, None), base) == []              # a check with no data is not gated


def test_spec_label_writes_k_way_rankings_that_rm_trains_on(env, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("INSTRUCTKIT_QUIET", "1")
    out = tmp_path / "rankings.jsonl"
    assert main(["spec", "label", "--spec", env["spec"], "--model", env["a"], "--prompts", env["prompts"], "--k", "4",
                 "--temperatures", "1.0,1.5", "--max-new-tokens", "12", "--out", str(out), "--threads", "1",
                 "--keep-ties"]) == 0
    assert "spec label: 16 prompts ranked by spec 'tiny'" in capsys.readouterr().out
    recs = datalib.load(out, "ranking")
    assert len(recs) == 16 and all(r.k == 4 and r.labeler == "spec:tiny" for r in recs)
    spec = load_spec(env["spec"], env["prompts"])
    for r in recs:  # ranks follow the spec's scores, ties allowed
        scores = spec.score([r.prompt] * r.k, r.completions)
        assert r.meta["spec_scores"] == scores
        assert all((scores[i] > scores[j]) == (r.ranks[i] < r.ranks[j]) for i in range(4) for j in range(4))
    assert sum(len(r.pairs()) for r in recs) > 0
    assert recs[0].meta["task"] == "chat"
    # `instructkit spec agree` against itself: 100%
    assert main(["spec", "agree", str(out), str(out)]) == 0
    assert "pairwise agreement (orders: better / worse / tie): 100.0%" in capsys.readouterr().out
    # the records are the contract's: the reward-model stage trains on them
    rm_out = tmp_path / "rm"
    assert main(["rm", f"model={env['a']}", f"data.train={out}", f"out={rm_out}", "batch_size=4", "threads=1",
                 "data.val_fraction=0"]) == 0
    assert json.loads((rm_out / "instructkit.json").read_text())["complete"]
