"""The AI labeler (RLAIF / Constitutional AI) with a local judge: the verdict log-likelihoods against
a hand computation, log-odds, p(yes) and the weighted combination, K-way records with ties and per-principle
verdicts, the content-hash cache (a re-run judges nothing), the `ai:` scorer, constitution errors
with line numbers, and `instructkit ai-label` end to end with agreement against input ranks and the
sandbox's panel and gold."""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import torch

from instructkit import data as datalib
from instructkit.cli import main
from instructkit.errors import InputError
from instructkit.feedback_ai.judge import (AILabeler, LocalJudge, VerdictCache, continuation_logprobs,
                                           load_constitution, log_odds, p_yes)
from instructkit.scoring import get_scorer
from test_spec_run import build_tiny_model

torch.set_num_threads(1)

CONSTITUTION = """
name: tiny-hhh
template: "request : {prompt}\\nresponse : {response}\\nrule : {principle}\\nanswer :"
verdicts: {yes: " yes", no: " no"}
principles:
  - {name: helpful, text: "the response answers", weight: 3}
  - the response is kind
"""


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("judge") / "judge", seed=3, steps=20))


@pytest.fixture(scope="module")
def judge(judge_dir):
    return LocalJudge(judge_dir, batch_size=3)


@pytest.fixture
def constitution(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(textwrap.dedent(CONSTITUTION))
    return load_constitution(str(p))


def by_hand(judge, context: str, continuation: str) -> float:
    """log P(continuation | context): one unpadded forward pass, log-softmax, the tokens' entries summed."""
    tok, model = judge.tokenizer, judge.model
    c = tok(context, add_special_tokens=False)["input_ids"]
    x = tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([c + x])).logits[0]  # (T, V)
    logp = torch.log_softmax(logits, dim=-1)
    return sum(logp[len(c) - 1 + t, x[t]].item() for t in range(len(x)))


def test_verdict_logprobs_match_a_hand_computation(judge, constitution):
    ctx = constitution.context(constitution.principles[0], "say something about the cat\n", "the cat is red .")
    assert ctx == "request : say something about the cat\nresponse : the cat is red .\nrule : the response answers\nanswer :"
    # batched with contexts of other lengths (left padding, position ids that skip it) and unbatched agree
    others = ["a", "request : a much longer context that forces padding on the short one " * 2]
    got = continuation_logprobs(judge.model, judge.tokenizer, [others[0], ctx, others[1], ctx],
                                [" no", " yes", " yes", " no"], batch_size=4)
    lp_yes, lp_no = by_hand(judge, ctx, " yes"), by_hand(judge, ctx, " no")
    assert got[1] == pytest.approx(lp_yes, abs=1e-4) and got[3] == pytest.approx(lp_no, abs=1e-4)
    assert got[0] == pytest.approx(by_hand(judge, "a", " no"), abs=1e-4)
    # the judge's verdict for one principle: p(yes) = P(yes) / (P(yes) + P(no)) = sigmoid(lp_yes - lp_no)
    v = judge.verdicts([ctx], " yes", " no")[0]
    assert v == pytest.approx([lp_yes, lp_no], abs=1e-4)
    assert log_odds("logprob", v) == pytest.approx(lp_yes - lp_no, abs=1e-4)
    want = math.exp(lp_yes) / (math.exp(lp_yes) + math.exp(lp_no))
    assert p_yes(log_odds("logprob", v)) == pytest.approx(want, abs=1e-6)
    assert p_yes(-1000.0) == pytest.approx(0.0) and p_yes(1000.0) == 1.0
    assert log_odds("sampled", [6.0, 1.0, 8.0]) == pytest.approx(math.log(6.5 / 1.5))  # 6 yes, 1 no, 1 neither
    assert log_odds("sampled", [0.0, 0.0, 8.0]) == 0.0  # never answers: abstains


def test_a_context_longer_than_the_model_is_cut_from_the_left(judge):
    long_ctx = "the cat is red . " * 200 + "answer :"
    (lp,) = continuation_logprobs(judge.model, judge.tokenizer, [long_ctx], [" yes"], max_len=judge.max_len)
    ids = judge.tokenizer(long_ctx, add_special_tokens=False)["input_ids"]
    x = judge.tokenizer(" yes", add_special_tokens=False)["input_ids"]
    kept = judge.tokenizer.decode(ids[len(ids) + len(x) - judge.max_len:])
    assert lp == pytest.approx(by_hand(judge, kept, " yes"), abs=1e-4)


def test_scores_combine_principles_by_weight_and_records_rank_with_ties(judge, constitution, tmp_path):
    labeler = AILabeler(judge, constitution, VerdictCache(tmp_path / "cache", judge.id))
    prompt = "say something about the dog\n"
    comps = ["the dog is blue .", "the sun is hot .", "the dog is blue .", "a bird can sing ."]
    per = labeler.principle_scores([prompt] * 4, comps)
    for c, row in zip(comps, per):  # each principle's verdict log-odds by hand
        for pr, got in zip(constitution.principles, row):
            ctx = constitution.context(pr, prompt, c)
            assert got == pytest.approx(by_hand(judge, ctx, " yes") - by_hand(judge, ctx, " no"), abs=1e-4)
    scores = labeler.score([prompt] * 4, comps)
    assert scores[0] == pytest.approx((3 * per[0][0] + 1 * per[0][1]) / 4)
    (rec,) = labeler.rank([prompt], [comps], [{"task": "chat"}])
    assert rec["labeler"] == "ai:tiny-hhh" and rec["task"] == "chat"
    assert rec["ranks"][0] == rec["ranks"][2]  # identical responses tie
    order = sorted(range(4), key=lambda i: -rec["ai_scores"][i])
    assert rec["ranks"][order[0]] == 1 and all(rec["ranks"][order[i]] <= rec["ranks"][order[i + 1]] for i in range(3))
    assert set(rec["ai_verdicts"]) == {"helpful", "p2"} and len(rec["ai_verdicts"]["helpful"]) == 4
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    (parsed,) = datalib.load(path, "ranking")
    assert parsed.ranks == rec["ranks"] and parsed.meta["ai_verdicts"] == rec["ai_verdicts"]


def test_the_cache_makes_a_rerun_cost_nothing(judge, constitution, tmp_path):
    calls = []

    class Counting:
        id, kind = judge.id, judge.kind

        def verdicts(self, contexts, yes, no):
            calls.append(len(contexts))
            return judge.verdicts(contexts, yes, no)
    prompts, comps = ["say hi\n"] * 3, ["hi .", "hello there .", "hi ."]
    first = AILabeler(Counting(), constitution, VerdictCache(tmp_path, judge.id))
    s1 = first.score(prompts, comps)
    assert sum(calls) == 4 and first.stats == {"judged": 4, "cached": 0}  # 2 distinct responses x 2 principles
    second = AILabeler(Counting(), constitution, VerdictCache(tmp_path, judge.id))  # a new process: from disk
    assert second.score(prompts, comps) == s1 and sum(calls) == 4 and second.stats == {"judged": 0, "cached": 6}
    other = VerdictCache(tmp_path, "another judge")
    assert other.path != second.cache.path and not other.data


def test_ai_scorer_through_get_scorer(judge_dir, judge, constitution, tmp_path, monkeypatch):
    monkeypatch.setenv("INSTRUCTKIT_CACHE", str(tmp_path / "cache"))
    score = get_scorer(f"ai:{judge_dir}:{constitution.path}")
    want = AILabeler(judge, constitution).score(["say hi\n"], ["hi ."])
    assert score(["say hi\n"], ["hi ."]) == pytest.approx(want, abs=1e-6)
    assert list((tmp_path / "cache" / "ai_judge").glob("*.jsonl"))
    with pytest.raises(InputError, match="ai:JUDGE:CONSTITUTION"):
        get_scorer("ai:just-one-part")


BAD = [
    ("principles: []\n", 1, "principles", "non-empty list"),
    ("principles:\n  - be kind\n  - {text: ''}\n", 3, "principles[1]", "expected a principle"),
    ("principles:\n  - be kind\n  - {text: be brief, wieght: 2}\n", 3, "principles[1]", "unknown key 'wieght'"),
    ("template: 'no placeholders'\nprinciples: [be kind]\n", 1, "template", "{response} and {principle}"),
    ("verdicts: {yes: ' yes', no: ' yes'}\nprinciples: [be kind]\n", 1, "verdicts", "two different"),
    ("principles: [be kind]\nrules: []\n", 2, "rules", "unknown key"),
    ("principles:\n  - be kind\n  - [oops\nname: x\n", 4, None, "invalid YAML"),
]


@pytest.mark.parametrize("text,line,field,words", BAD, ids=[b[3] for b in BAD])
def test_constitution_errors_name_line_and_key(tmp_path, text, line, field, words):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(InputError) as e:
        load_constitution(str(p))
    assert (e.value.path, e.value.line, e.value.field) == (str(p), line, field) and words in e.value.message


def test_a_bare_list_is_a_constitution(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("- be kind\n- be brief\n")
    c = load_constitution(str(p))
    assert [(x.name, x.text, x.weight) for x in c.principles] == [("p1", "be kind", 1.0), ("p2", "be brief", 1.0)]


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from instructkit.sandbox.world import World

    out = tmp_path_factory.mktemp("w") / "world"
    World.build("tiny", 0).save(out)
    return out


def test_ai_label_cli_from_samples_and_from_a_model(judge_dir, tiny_world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("INSTRUCTKIT_CACHE", str(tmp_path / "cache"))
    const = tmp_path / "c.yaml"
    const.write_text(textwrap.dedent(CONSTITUTION))
    # --in: records with the sandbox training pool's ranks; agreement with them is reported
    from instructkit.sandbox import labelers as L
    from instructkit.sandbox.world import World

    world = World.load(tiny_world)
    prompts = [r["prompt"] for r in world.prompts("rm")[:6]]
    comps = [["i can not help with that", "first cut two thin sticks", "the cat is red", "unknown"][: 3 + i % 2]
             for i in range(6)]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in L.label_records(world, prompts, comps, "train")))
    out = tmp_path / "ai.jsonl"
    args = ["ai-label", "--judge", judge_dir, "--principles", str(const), "--in", str(samples), "--out", str(out),
            "--world", str(tiny_world), "--threads", "1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "ai-label: 6 prompts" in printed and "agreement with the input's ranks" in printed
    assert "ai:tiny-hhh vs held-out panel" in printed and "vs gold ordering" in printed
    recs = datalib.load(out, "ranking")
    assert len(recs) == 6 and all(r.labeler == "ai:tiny-hhh" for r in recs) and recs[0].meta["task"]
    summary = json.loads(Path(str(out) + ".summary.json").read_text())
    assert summary["judged"] > 0 and summary["vs_input"]["items"] == 6
    assert 0 <= summary["agreement"]["vs_gold"]["strict_accuracy"] <= 1
    # a re-run is served from the cache
    assert main(args) == 0
    assert json.loads(Path(str(out) + ".summary.json").read_text())["judged"] == 0
    capsys.readouterr()
    # --model --prompts: sample K per prompt, then judge (the constitution flag's other name)
    out2 = tmp_path / "ai2.jsonl"
    assert main(["ai-label", "--judge", judge_dir, "--constitution", str(const), "--model", judge_dir,
                 "--prompts", str(tiny_world / "prompts" / "rm.jsonl"), "--limit", "5", "--k", "2..3",
                 "--max-new-tokens", "8", "--out", str(out2), "--threads", "1", "--keep-ties"]) == 0
    recs = datalib.load(out2, "ranking")
    assert len(recs) == 5 and all(2 <= r.k <= 3 for r in recs)
    # bad usage is an input error (exit 2)
    assert main(["ai-label", "--judge", judge_dir, "--principles", str(const), "--out", str(out2)]) == 2
    assert main(["ai-label", "--judge", judge_dir, "--principles", str(tmp_path / "none.yaml"), "--in",
                 str(samples), "--out", str(out2)]) == 2
