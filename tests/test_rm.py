"""Stage `rm`, `rm-eval` and `score`: the K-way batching on hand-computed values, K forward rows
per prompt, and every command end to end through the CLI on a tiny GPT-2."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from instructkit.cli import main
from instructkit.losses import ranking_loss
from instructkit.reward import RewardScorer, create_reward_model, encode_response
from instructkit.stages import rm as rm_stage
from instructkit.stages.rm import collate_rankings, forward_backward, ranking_scores, split_by_prompt
from instructkit.stages.rm_eval import EncodedRanking, evaluate
from test_reward import build_world, make_rankings, write_jsonl

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("rmstage")
    paths = build_world(root)
    recs = make_rankings(120, seed=5)
    recs[3]["not_rankable"] = True
    recs[4]["ranks"] = [1] * len(recs[4]["completions"])  # all tied: no pair
    paths["train"] = write_jsonl(root / "train.jsonl", recs)
    paths["val"] = write_jsonl(root / "val.jsonl", [{**r, "agreement": 0.75} for r in make_rankings(16, seed=9)])
    paths["train_ks"] = [len(r["completions"]) for i, r in enumerate(recs) if i not in (3, 4)]
    return paths


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("INSTRUCTKIT_QUIET", "1")


def rm_args(world, out, *extra):
    return ["rm", f"model={world['gpt2']}", f"data.train={world['train']}", f"out={out}", "batch_size=8",
            "optim.lr=1e-2", "threads=1", *extra]


# ---------------------------------------------------------------------------- batching math

class _StubBase(nn.Module):
    """hidden state of a token = its entry in `table` (d = 1)."""

    def __init__(self, table):
        super().__init__()
        self.emb = nn.Embedding.from_pretrained(torch.tensor(table).unsqueeze(1), freeze=False)
        self.calls, self.rows = 0, 0

    def forward(self, input_ids, attention_mask, position_ids, use_cache):
        self.calls += 1
        self.rows += input_ids.shape[0]
        return SimpleNamespace(last_hidden_state=self.emb(input_ids))


class _StubRM(nn.Module):
    """score of a sequence = table[its last real token]; padding (0) and filler (5) score 100, so
    reading any other position shows up."""

    def __init__(self, table):
        super().__init__()
        self.base = _StubBase(table)
        self.score = nn.Linear(1, 1, bias=False)
        nn.init.ones_(self.score.weight)

    @property
    def base_model(self):
        return self.base


def test_k_way_loss_through_the_batching_on_hand_computed_values():
    table = [100.0] * 20
    table[10], table[11], table[12], table[13], table[14] = 2.0, 1.0, 0.0, 0.3, -1.0
    model = _StubRM(table)
    fill = 5

    def seq(n, last):
        return [fill] * n + [last]

    items = [
        # A: K=3, ranks [1, 2, 2]: pairs (0,1) margin 2-1 = 1, (0,2) margin 2; the tie (1,2) is dropped
        EncodedRanking([seq(1, 10), seq(4, 11), seq(2, 12)], [1, 2, 2]),
        # B: K=2, ranks [2, 1]: pair (1,0) margin 0 - 0.3 = -0.3
        EncodedRanking([seq(0, 13), seq(6, 12)], [2, 1]),
        # C: K=4, scores [1, 0, 0, -1], ranks [1..4]: margins 1, 1, 2, 0, 1, 1
        EncodedRanking([seq(3, 11), seq(1, 12), seq(2, 12), seq(5, 14)], [1, 2, 3, 4]),
    ]
    batch = collate_rankings(items, pad_id=0)
    (ids, _, rows), = batch["buckets"]
    assert ids.shape == (9, 7) and rows.tolist() == list(range(9))
    assert batch["n_rows"] == 9 and batch["tokens"] == 2 + 5 + 3 + 1 + 7 + 4 + 2 + 3 + 6
    assert batch["valid"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    scores = ranking_scores(model, batch)  # (3, 4)
    assert torch.allclose(scores.detach(), torch.tensor([[2, 1, 0, 0], [0.3, 0, 0, 0], [1, 0, 0, -1.0]]))
    loss, stats = ranking_loss(scores, batch["ranks"], batch["valid"])
    # -log sigmoid: m=1 -> 0.31326, m=2 -> 0.12693, m=0 -> 0.69315, m=-0.3 -> 0.85436
    # A: (0.31326 + 0.12693) / 2 = 0.220095;  B: 0.85436 / 1;
    # C: (4 x 0.31326 + 0.12693 + 0.69315) / 6 = 2.07312 / 6 = 0.345520
    # mean over prompts: (0.220095 + 0.85436 + 0.345520) / 3 = 0.473325
    assert loss.item() == pytest.approx(0.473325, abs=1e-5)
    # accuracy pooled over the 9 pairs: A 2, B 0, C 5 + 0.5 (score tie) -> 7.5 / 9
    assert stats["n_pairs"] == 9 and float(stats["accuracy"]) == pytest.approx(7.5 / 9)
    # length buckets: the same scores, rows back in input order, less padding
    bucketed = collate_rankings(items, pad_id=0, bucket_rows=4)
    assert [b[0].shape for b in bucketed["buckets"]] == [(4, 3), (4, 6), (1, 7)]  # lengths 1,2,2,3 | 3,4,5,6 | 7
    assert bucketed["padded_tokens"] == 12 + 24 + 7 < 9 * 7
    assert torch.allclose(ranking_scores(model, bucketed).detach(), scores.detach())
    # the same through the training step: whole batch, one prompt per micro-batch, length buckets
    for micro, buckets in ((0, 0), (1, 0), (0, 2), (2, 3)):
        model.zero_grad()
        out = forward_backward(model, items, pad_id=0, micro_batch_size=micro, bucket_rows=buckets)
        assert out["loss"] == pytest.approx(0.473325, abs=1e-5)
        assert out["rows"] == 9 and out["n_pairs"] == 9
        grad = model.base.emb.weight.grad.squeeze(1)
        assert grad[5].item() == 0.0 and grad[0].item() == 0.0  # filler and padding are never read
        # d loss / d r for token 13 (B's loser scoring 0.3): sigmoid(0.3) / 1 pair / 3 prompts = 0.57444 / 3
        assert grad[13].item() == pytest.approx(0.574443 / 3, abs=1e-5)


def test_exactly_k_forward_rows_per_prompt_in_one_pass(world):
    model, tok, _ = create_reward_model(world["gpt2"])
    ks = [4, 9, 2]
    items = [EncodedRanking([encode_response(tok, "say", f"the cat {j}", 48)[0] for j in range(k)],
                            list(range(1, k + 1))) for k in ks]
    seen = []
    handle = model.base_model.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs["input_ids"].shape[0]),
                                                    with_kwargs=True)
    forward_backward(model, items, tok.pad_token_id)
    assert seen == [sum(ks)]  # one forward, 4 + 9 + 2 rows (a pairwise trainer: 2 x (6 + 36 + 1) = 86)
    seen.clear()
    forward_backward(model, items, tok.pad_token_id, bucket_rows=4)
    assert seen == [4, 4, 4, 3]  # length buckets: still every row once
    seen.clear()
    forward_backward(model, items, tok.pad_token_id, micro_batch_size=2)
    assert sorted(seen) == sorted([4 + 2, 9])  # micro-batches hold whole prompts (sorted by length)
    handle.remove()


def test_micro_batches_give_the_same_gradients(world):
    model, tok, _ = create_reward_model(world["gpt2"])
    recs = make_rankings(6, seed=2)
    items = [EncodedRanking([encode_response(tok, r["prompt"], c, 48)[0] for c in r["completions"]], r["ranks"])
             for r in recs]
    grads = []
    for micro, buckets in ((0, 0), (2, 0), (0, 5)):
        model.zero_grad()
        forward_backward(model, items, tok.pad_token_id, micro, buckets)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and torch.allclose(grads[0], grads[2], atol=1e-6)


def test_split_by_prompt_keeps_a_prompt_on_one_side():
    from instructkit.data.records import parse_ranking

    rs = [parse_ranking(r, "x", i) for i, r in enumerate(make_rankings(40) * 2)]  # every prompt twice
    train, val = split_by_prompt(rs, 0.25, seed=0)
    assert val and not ({r.prompt for r in train} & {r.prompt for r in val})


def test_evaluate_report_fields():
    from instructkit.data.records import parse_ranking

    r = parse_ranking({"prompt": "p", "completions": ["a", "b", "c"], "ranks": [1, 2, 3], "gold_ranks": [1, 3, 2],
                       "task": "t", "agreement": 0.7}, "x", 1)
    rep = evaluate([r], [[2.0, 1.0, 0.0]], bins=5)
    # label pairs (0,1) (0,2) (1,2) all ordered right; gold pairs (0,2) (0,1) (2,1): RM gets 2 of 3
    assert rep["accuracy"] == 1.0 and rep["gold"]["accuracy"] == pytest.approx(2 / 3)
    assert rep["gold"]["labels_accuracy"] == pytest.approx(2 / 3)
    assert rep["agreement"]["ratio"] == pytest.approx(1 / 0.7)
    # confidences sigmoid(1) = 0.731 (x2, bin 0.7-0.8) and sigmoid(2) = 0.881 (bin 0.8-0.9), all right
    # ECE = 2/3 |1 - 0.731| + 1/3 |1 - 0.881| = 0.17924 + 0.03973 = 0.21897
    assert rep["calibration"]["ece"] == pytest.approx(0.21897, abs=1e-4)
    assert rep["by_task"]["t"]["n_pairs"] == 3
    # PPO's gate: the RM picks completion 0, gold ranks it 1st of [1, 3, 2]: -1 - mean(-1, -3, -2) = +1
    assert rep["best_of_k"] == {"bon_gain": 1.0, "bon_n": 3, "judge": "gold rank places", "n_prompts": 1}


# ---------------------------------------------------------------------------- end to end

def test_rm_end_to_end_then_rm_eval_and_score(world, tmp_path, capsys):
    out = tmp_path / "rm"
    rows = []

    def count(module, args, kwargs, output):
        if module.training and type(module).__name__ == "GPT2Model":
            rows.append(kwargs["input_ids"].shape[0])
    handle = nn.modules.module.register_module_forward_hook(count, with_kwargs=True)
    try:
        code = main(rm_args(world, out, f"data.val={world['val']}", f"normalize.data={world['demos']}",
                            "eval.agreement=0.75", "log_every=1"))
    finally:
        handle.remove()
    printed = capsys.readouterr().out
    assert code == 0, printed
    # exactly K rows per prompt over the epoch: sum of K of the rankable training records
    # (bucket_rows 32: a step's rows in length groups of at most 32)
    assert sum(rows) == sum(world["train_ks"]) and max(rows) <= 32 and len(rows) >= -(-len(world["train_ks"]) // 8)
    assert "skipped 1 not_rankable and 1 all-tied" in printed
    assert "pairwise accuracy" in printed and "labelers' agreement 0.750" in printed and "vs gold" in printed
    meta = json.loads((out / "instructkit.json").read_text())
    assert meta["complete"] and meta["stage"] == "rm"
    assert meta["gates"]["bon_gain"] > 0 and meta["gates"]["bon_n"] == "2..6"  # read by ppo's check_gate
    assert meta["metrics"]["val_accuracy"] > 0.65  # learnable signal: "good" words up, "bad" words down
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == list(range(1, -(-len(world["train_ks"]) // 8) + 1))
    assert {"loss", "accuracy", "lr", "grad_norm"} <= set(lines[0])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["GPT2ForSequenceClassification"]
    assert cfg["instructkit_reward"]["normalization"]["kind"] == "demonstrations"
    # normalisation: demonstrations average 0
    demos = [json.loads(l) for l in Path(world["demos"]).read_text().splitlines()]
    scorer = RewardScorer.load(out)
    scores = scorer.score([d["prompt"] for d in demos], [d["completion"] for d in demos])
    assert abs(sum(scores) / len(scores)) < 1e-5
    # rm-eval
    report_path = tmp_path / "report.json"
    assert main(["rm-eval", str(out), f"data={world['val']}", f"out={report_path}"]) == 0
    printed = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert report["accuracy"] == pytest.approx(meta["metrics"]["val_accuracy"], abs=1e-6)
    assert report["agreement"]["source"].startswith("records") and "gold" in report and "by_k" in report
    assert "by task" in printed and "ECE" in printed
    # gold ordering from a scorer spec (the sandbox's is 'sandbox:WORLD'): a reversed gold utility
    # gives exactly the complementary accuracy over the same gold pairs
    from instructkit.scoring import register
    from test_reward import _utility

    register("reversed-test-utility")(lambda arg: lambda ps, cs: [-_utility(c) for c in cs])
    assert main(["rm-eval", str(out), f"data={world['val']}", f"out={report_path}",
                 "gold=reversed-test-utility:x"]) == 0
    reversed_gold = json.loads(report_path.read_text())["gold"]
    assert reversed_gold["n_pairs"] == report["gold"]["n_pairs"]
    assert reversed_gold["accuracy"] == pytest.approx(1 - report["gold"]["accuracy"], abs=1e-9)
    # score: --input / --out, atomically, the normalised score on every record
    scored = tmp_path / "scored.jsonl"
    assert main(["score", str(out), "--input", world["demos"], "--out", str(scored), "--raw"]) == 0
    recs = [json.loads(l) for l in scored.read_text().splitlines()]
    assert len(recs) == len(demos) and recs[0]["prompt"] == demos[0]["prompt"]
    assert [r["score"] for r in recs] == pytest.approx(scores, abs=1e-5)
    assert all("score_raw" in r for r in recs)


def test_pairs_ratings_and_hh_transcripts_train_through_the_same_command(world, tmp_path, capsys):
    recs = make_rankings(40, seed=3)
    pairs = [{"prompt": r["prompt"], "chosen": r["completions"][r["ranks"].index(1)],
              "rejected": r["completions"][r["ranks"].index(2)]} for r in recs]
    ratings = [{"prompt": r["prompt"], "completions": r["completions"], "scores": [10 - x for x in r["ranks"]]}
               for r in recs]
    hh = [{"chosen": f"\n\nHuman: {p['prompt']}\n\nAssistant: {p['chosen']}",
           "rejected": f"\n\nHuman: {p['prompt']}\n\nAssistant: {p['rejected']}"} for p in pairs if p["chosen"] != p["rejected"]]
    # an SFT directory that records its demonstrations: the default normalisation finds them
    sft = tmp_path / "sft"
    shutil.copytree(world["gpt2"], sft)
    (sft / "instructkit.json").write_text(json.dumps({"stage": "sft", "complete": True,
                                                      "inputs": {"data.train": {"path": world["demos"]}}}))
    for name, data in (("pairs", pairs), ("ratings", ratings), ("hh", hh)):
        path = write_jsonl(tmp_path / f"{name}.jsonl", data)
        out = tmp_path / f"rm_{name}"
        assert main(["rm", f"model={sft}", f"data.train={path}", f"out={out}", "batch_size=8", "threads=1",
                     "data.val_fraction=0.2"]) == 0, capsys.readouterr()
        meta = json.loads((out / "instructkit.json").read_text())
        assert meta["reward"]["normalization"]["source"] == world["demos"]
        assert 0 <= meta["metrics"]["val_accuracy"] <= 1
    assert "K 2-2" in capsys.readouterr().out  # pairs are K = 2 rankings


def test_recorded_demonstrations_resolve_from_another_directory(world, tmp_path, monkeypatch):
    """An SFT run records its data path as it saw it (relative to where it ran); the RM finds the file
    from elsewhere through the directories above the model, and only if the recorded digest matches."""
    from instructkit.run import file_sha256
    from instructkit.stages.rm import recorded_demonstrations

    project = tmp_path / "project"
    (project / "runs" / "demo" / "world").mkdir(parents=True)
    demos = project / "runs" / "demo" / "world" / "demonstrations.jsonl"
    shutil.copy(world["demos"], demos)
    sft = project / "runs" / "demo" / "sft"
    sft.mkdir()

    def record(path, digest):
        (sft / "instructkit.json").write_text(json.dumps({"stage": "sft", "complete": True, "inputs": {
            "data.train": {"path": path, "sha256": digest}}}))
    record("runs/demo/world/demonstrations.jsonl", file_sha256(demos))
    monkeypatch.chdir(project)
    assert recorded_demonstrations("runs/demo/sft") == "runs/demo/world/demonstrations.jsonl"  # as recorded
    monkeypatch.chdir(tmp_path)
    assert recorded_demonstrations(str(sft)) == str(demos)  # from another directory: found above the model
    record("runs/demo/world/demonstrations.jsonl", "0" * 64)
    assert recorded_demonstrations(str(sft)) == ""  # a different file under that name is not taken
    record(str(demos), None)
    assert recorded_demonstrations(str(sft)) == str(demos)  # absolute, no digest
    (sft / "instructkit.json").write_text(json.dumps({"stage": "rm", "inputs": {"data.train": {"path": str(demos)}}}))
    assert recorded_demonstrations(str(sft)) == ""  # not an SFT run


def test_bad_input_exits_2_and_leaves_nothing(world, tmp_path, capsys):
    lines = Path(world["train"]).read_text().splitlines()
    bad = json.loads(lines[2])
    bad["ranks"] = bad["ranks"][:-1]
    lines[2] = json.dumps(bad)
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "rm"
    assert main(rm_args(world, out, f"data.train={path}")) == 2
    err = capsys.readouterr().err
    assert f"{path}:3" in err and "field 'ranks'" in err and not out.exists()
    # a policy with another tokenizer is refused before anything is written
    from instructkit.models import save_model, train_tokenizer
    from instructkit.reward import quiet_transformers

    other = train_tokenizer(["zebra quartz jumps", "vexing fjord"] * 30, vocab_size=300)
    pol = tmp_path / "policy"
    with quiet_transformers():
        save_model(create_reward_model(world["gpt2"])[0], other, pol)
    assert main(rm_args(world, out, f"policy={pol}")) == 2
    assert "tokenizer differs" in capsys.readouterr().err and not out.exists()
    assert main(["score", world["gpt2"], "--out", str(tmp_path / "s.jsonl")]) == 2
    assert "field 'input'" in capsys.readouterr().err
    assert main(rm_args(world, out, "normalize.kind=reference")) == 2  # needs normalize.data
    assert not out.exists()


def test_resume_after_kill_ends_with_identical_weights(world, tmp_path, monkeypatch, capsys):
    extra = ("save_every=2", "epochs=2", "data.val_fraction=0.1", "normalize.kind=none")
    assert main(rm_args(world, tmp_path / "full", *extra)) == 0
    real, calls = rm_stage.forward_backward, []

    def killed_at_step_5(*a, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(rm_stage, "forward_backward", killed_at_step_5)
    out = tmp_path / "killed"
    assert main(rm_args(world, out, *extra)) == 130
    assert (out / "checkpoint" / "state.pt").exists() and not (out / "instructkit.json").exists()
    monkeypatch.setattr(rm_stage, "forward_backward", real)
    assert main(rm_args(world, out, *extra)) == 0
    assert "resuming from step 4" in capsys.readouterr().out
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def log(d):
        return [{k: v for k, v in json.loads(l).items() if k != "rows_per_s"}
                for l in (d / "metrics.jsonl").read_text().splitlines()]
    assert log(tmp_path / "full") == log(out)
    assert main(rm_args(world, out, *extra)) == 0 and "already complete" in capsys.readouterr().out


def test_several_rankings_files_are_concatenated(world, tmp_path, capsys):
    """data.train takes a YAML list or a comma-separated string (iterated rounds: every round's
    rankings so far); records are concatenated in order, errors name the file they are in, and the
    run's identity covers every file, so a changed one is noticed on resume."""
    from instructkit.config import RMConfig, load_config
    from instructkit.errors import InputError
    from instructkit.run import RunDir, file_sha256
    from instructkit.stages.rm_eval import load_rankings

    lines = Path(world["train"]).read_text().splitlines(keepends=True)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(lines[:50]))
    b.write_text("".join(lines[50:]))
    whole = load_rankings(world["train"])
    assert load_rankings([str(a), str(b)]) == whole and load_rankings(f"{a},{b}") == whole
    y = tmp_path / "rm.yaml"
    y.write_text(f"data:\n  train: [{a}, {b}]\n")
    assert load_config(RMConfig, str(y)).data.train == [str(a), str(b)]
    assert load_config(RMConfig, overrides=[f"data.train={a},{b}"]).data.train == [str(a), str(b)]
    assert load_config(RMConfig, overrides=[f"data.train={a}"]).data.train == [str(a)]

    out = tmp_path / "rm"
    assert main(rm_args(world, out, f"data.train={a},{b}", "data.val_fraction=0")) == 0
    assert f"{len(whole) - 2} training rankings" in capsys.readouterr().out  # 1 not_rankable, 1 tied
    meta = json.loads((out / "instructkit.json").read_text())
    assert meta["config"]["data"]["train"] == [str(a), str(b)]
    assert meta["inputs"]["data.train"]["path"] == [str(a), str(b)]

    # a bad record in the second file is reported with that file and its own line number
    bad = json.loads(lines[52])
    bad["ranks"] = bad["ranks"][:-1]
    b2 = tmp_path / "b2.jsonl"
    b2.write_text("".join(lines[50:52]) + json.dumps(bad) + "\n")
    assert main(rm_args(world, tmp_path / "rm_bad", f"data.train={a},{b2}")) == 2
    err = capsys.readouterr().err
    assert f"{b2}:3" in err and "field 'ranks'" in err and not (tmp_path / "rm_bad").exists()

    # resuming an unfinished run: a changed second file (or a different order) is a different run
    cfg = RMConfig(out=str(tmp_path / "unfinished"))
    cfg.data.train = [str(a), str(b)]
    first = RunDir(cfg.out, "rm", cfg, {"data.train": cfg.data.train})
    first.start()
    assert RunDir(cfg.out, "rm", cfg, {"data.train": cfg.data.train}).start() is None  # same inputs: continues
    # one file in a list is recorded as before: its path and its own digest
    assert RunDir(str(tmp_path / "x"), "rm", cfg, {"data.train": [str(a)]}).inputs["data.train"] == {
        "path": str(a), "sha256": file_sha256(a)}
    assert RunDir(cfg.out, "rm", cfg, {"data.train": [str(b), str(a)]}).inputs != first.inputs
    b.write_text("".join(lines[51:]))
    with pytest.raises(InputError, match="different config or data"):
        RunDir(cfg.out, "rm", cfg, {"data.train": cfg.data.train}).start()


def test_a_previous_rm_is_compared_on_the_newest_files_held_out_prompts(world, tmp_path, capsys):
    """eval.previous (iterated rounds): after training, this RM and the earlier one are scored on the
    held-out prompts of the last data.train file only, the same records for both: the figures equal
    rm-eval's on exactly those records."""
    from instructkit.stages.rm import split_by_prompt
    from instructkit.stages.rm_eval import evaluate, load_rankings, rankable, score_with

    lines = Path(world["train"]).read_text().splitlines(keepends=True)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(lines[:60]))
    b.write_text("".join(lines[60:]))
    first, second = tmp_path / "rm1", tmp_path / "rm2"
    assert main(rm_args(world, first, f"data.train={a}")) == 0
    assert main(rm_args(world, second, f"data.train={a},{b}", f"eval.previous={first}", "seed=3",
                        "data.val_fraction=0.2")) == 0
    out = capsys.readouterr().out
    latest = json.loads((second / "instructkit.json").read_text())["gates"]["latest"]

    # the records: held out by the same split the RM made, and from b.jsonl
    every, _, _ = rankable(load_rankings([str(a), str(b)]))
    _, val = split_by_prompt(every, 0.2, 3)
    n_b = len(rankable(load_rankings(str(b)))[0])
    from_b = {id(r) for r in every[len(every) - n_b:]}  # records, not prompt texts: a prompt may be in both files
    held = [r for r in val if id(r) in from_b]
    assert held and len(held) < len(val)  # some held-out prompts come from a.jsonl and are left out
    new, old = evaluate(held, score_with(str(second), held)), evaluate(held, score_with(str(first), held))
    assert (latest["data"], latest["previous"]) == (str(b), str(first))
    assert (latest["n_prompts"], latest["n_pairs"]) == (new["n_prompts"], new["n_pairs"]) == (len(held), old["n_pairs"])
    assert latest["accuracy"] == pytest.approx(new["accuracy"], abs=1e-9)
    assert latest["previous_accuracy"] == pytest.approx(old["accuracy"], abs=1e-9)
    assert latest["bon_gain"] == pytest.approx(new["best_of_k"]["bon_gain"], abs=1e-6)
    assert latest["previous_bon_gain"] == pytest.approx(old["best_of_k"]["bon_gain"], abs=1e-6)
    assert f"rm: on {len(held)} held-out prompts of {b}" in out

    # not a reward model: exit 2, nothing written
    assert main(rm_args(world, tmp_path / "rm3", f"eval.previous={tmp_path / 'nowhere'}")) == 2
    err = capsys.readouterr().err
    assert "field 'eval.previous'" in err and "no reward model here" in err and not (tmp_path / "rm3").exists()


@pytest.mark.filterwarnings("ignore:ppo iteration")  # a 4-token tiny policy never ends with EOS
def test_ppo_refuses_an_rm_trained_on_reversed_labels_and_runs_with_the_real_one(world, tmp_path, capsys):
    """The RM quality gate end to end: the same data with every ranking turned upside down trains an RM
    whose best-of-K pick is worse than a random completion by the gold ordering; PPO will not start
    on it (exit 2, the figure named, nothing written), starts on the RM of the true labels, and
    `require_gate=false` overrides the gate."""
    records = [json.loads(l) for l in Path(world["train"]).read_text().splitlines()]
    flipped = [{**r, "ranks": [len(r["ranks"]) + 1 - x for x in r["ranks"]]} for r in records]
    for name, data in (("good", world["train"]), ("bad", write_jsonl(tmp_path / "flipped.jsonl", flipped))):
        assert main(rm_args(world, tmp_path / name, f"data.train={data}", f"data.val={world['val']}")) == 0
    gain = {n: json.loads((tmp_path / n / "instructkit.json").read_text())["gates"]["bon_gain"] for n in ("good", "bad")}
    assert gain["bad"] < 0 < gain["good"]

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["prompt"]} for r in records[:8]])

    def ppo(rm, out, *extra):
        return main(["ppo", f"policy={world['gpt2']}", f"reward_model={tmp_path / rm}", f"prompts={prompts}",
                     "episodes=4", "rollout_batch=4", "minibatch=4", "ppo_epochs=1", "max_new_tokens=4",
                     "warmup_iterations=0", "value_warmup_iterations=0", "select=last", "threads=1",
                     f"out={tmp_path / out}", *extra])
    capsys.readouterr()
    assert ppo("bad", "ppo_bad") == 2
    err = capsys.readouterr().err
    assert "RM quality gate" in err and f"{gain['bad']:+.4f}" in err and "field 'gates.bon_gain'" in err
    assert not (tmp_path / "ppo_bad").exists()
    assert ppo("good", "ppo_good") == 0 and f"RM gate ok: best-of-2..6 gain {gain['good']:+.4f}" in capsys.readouterr().out
    assert ppo("bad", "ppo_forced", "require_gate=false") == 0
