"""instructkit.stages.direct: the batching path on hand-computed values, the shared-prefix forward
against the plain one, and `instructkit dpo` end to end for every loss on a tiny GPT-2.

Hand-computed constants (log sigmoid(x) = -log(1 + e^-x)):
  x=1 -> -0.31326169, x=2 -> -0.12692801, x=-1 -> -1.31326169, x=0 -> -log 2 = -0.69314718;
  sigmoid(1.5) = 0.81757448.
"""
import json
import math

import pytest
import torch
from torch.testing import assert_close

from instructkit import cli
from instructkit.config import DirectConfig, ModelInit
from instructkit.models import load_causal_lm, new_model, save_model, train_tokenizer
from instructkit.stages import direct
from instructkit.stages.direct import (Group, completion_logps, completion_logps_full, encode_group, flatten,
                                       grid_ranks, kto_batch_loss, preference_loss, to_grid)

torch.set_num_threads(1)
ATOL = dict(atol=1e-5, rtol=1e-5)
NAN = float("nan")


def t(rows, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype)


def cfg(**kw) -> DirectConfig:
    return DirectConfig(**kw)


# ----------------------------------------------------------------------------- batching path, fixed tensors

# Three prompts. Prompt 0: K=3 ranked [1, 2, 2] (the 2-2 tie forms no pair); prompt 1: K=2 ranked [2, 1]
# in a 3-slot grid (slot 2 is padding, filled with nan that must not leak); prompt 2: all tied (no pair).
RANKS = t([[1, 2, 2], [2, 1, 0], [1, 1, 0]], torch.long)
VALID = t([[1, 1, 1], [1, 1, 0], [1, 1, 0]], torch.bool)
PI = t([[-10.0, -12.0, -14.0], [-5.0, -3.0, NAN], [-1.0, -1.0, NAN]])
REF = t([[-11.0, -11.0, -11.0], [-4.0, -4.0, NAN], [-2.0, -2.0, NAN]])
NTOK = t([[2, 2, 2], [2, 2, 0], [1, 1, 0]], torch.long)


def test_dpo_kway_ties_mixed_k_per_prompt_average():
    loss, stats = preference_loss(cfg(loss="dpo", beta=0.5), PI, REF, NTOK, RANKS, VALID)
    # log-ratios r = pi - ref: prompt 0 [1, -1, -3], prompt 1 [-1, 1]
    # prompt 0 pairs (0 > 1): beta h = 0.5 * 2 = 1 -> 0.31326; (0 > 2): 0.5 * 4 = 2 -> 0.12693; mean 0.220095
    # prompt 1 pair (1 > 0): 0.5 * 2 = 1 -> 0.31326.   prompt 2: no pair, not counted.
    assert_close(loss, torch.tensor((0.31326169 + 0.12692801) / 2 / 2 + 0.31326169 / 2), **ATOL)
    assert stats["n_pairs"] == 3
    # pooled over the 3 pairs: chosen rewards 0.5 * [1, 1, 1]; rejected 0.5 * [-1, -3, -1]
    assert stats["rewards_chosen"] == pytest.approx(0.5)
    assert stats["rewards_rejected"] == pytest.approx(-5 / 6)
    assert stats["reward_margin"] == pytest.approx(4 / 3)
    assert stats["reward_accuracy"] == 1.0
    assert stats["logps_chosen"] == pytest.approx((-10 - 10 - 3) / 3)
    assert stats["logps_rejected"] == pytest.approx((-12 - 14 - 5) / 3)


def test_dpo_equal_logprobs_and_extreme_margins():
    ranks, valid = t([[1, 2]], torch.long), t([[1, 1]], torch.bool)
    # equal: h = 0 -> log 2, no reward margin, accuracy 0 (chosen must be strictly above)
    loss, stats = preference_loss(cfg(loss="dpo"), t([[-3.0, -3.0]]), t([[-3.0, -3.0]]), t([[2, 2]]), ranks, valid)
    assert_close(loss, torch.tensor(math.log(2)), **ATOL)
    assert stats["reward_margin"] == 0.0 and stats["reward_accuracy"] == 0.0
    # h = +-1000 with beta 1: loss 0 and 1000, finite gradients
    for h, expected in ((1000.0, 0.0), (-1000.0, 1000.0)):
        pi = t([[h, 0.0]]).requires_grad_()
        loss, _ = preference_loss(cfg(loss="dpo", beta=1.0), pi, t([[0.0, 0.0]]), t([[2, 2]]), ranks, valid)
        loss.backward()
        assert_close(loss, torch.tensor(expected), **ATOL)
        assert torch.isfinite(pi.grad).all()


def test_cdpo_label_smoothing_zero_and_half():
    ranks, valid = t([[1, 2]], torch.long), t([[1, 1]], torch.bool)
    pi, ref, n = t([[-1.0, -3.0]]), t([[-2.0, -2.0]]), t([[1, 1]])  # h = 1 - (-1) = 2, beta 0.5 -> x = 1
    l0, _ = preference_loss(cfg(loss="cdpo", beta=0.5, label_smoothing=0.0), pi, ref, n, ranks, valid)
    assert_close(l0, torch.tensor(0.31326169), **ATOL)
    # e = 0.5: 0.5 * 0.31326 + 0.5 * 1.31326 = 0.81326 (and the gradient in h vanishes)
    l5, _ = preference_loss(cfg(loss="cdpo", beta=0.5, label_smoothing=0.5), pi, ref, n, ranks, valid)
    assert_close(l5, torch.tensor(0.81326169), **ATOL)
    # loss=dpo ignores label_smoothing
    ld, _ = preference_loss(cfg(loss="dpo", beta=0.5, label_smoothing=0.3), pi, ref, n, ranks, valid)
    assert_close(ld, l0, **ATOL)


def test_ipo_uses_length_averaged_logprobs():
    ranks, valid = t([[1, 2], [1, 2]], torch.long), t([[1, 1], [1, 1]], torch.bool)
    n = t([[3, 4], [3, 4]])
    pi = t([[-6.0, -8.0], [-6.0, -12.0]])
    ref = t([[-9.0, -4.0], [-9.0, -4.0]])
    # averages: w: -6/3 = -2 vs ref -3 -> +1; l: -8/4 = -2 vs -1 -> -1 (prompt 0), -12/4 = -3 vs -1 -> -2 (prompt 1)
    # h = 2 and 3; tau 0.25 -> target 1/(2 tau) = 2; losses 0 and 1; mean 0.5 (sums would give h = 7: 25)
    loss, _ = preference_loss(cfg(loss="ipo", tau=0.25), pi, ref, n, ranks, valid)
    assert_close(loss, torch.tensor(0.5), **ATOL)


def test_slic_hinge_and_sft_term():
    ranks, valid = t([[1, 2], [1, 2]], torch.long), t([[1, 1], [1, 1]], torch.bool)
    pi, ref, n = t([[-1.0, -3.0], [-2.0, -3.0]]), t([[-2.0, -2.0], [-2.0, -2.0]]), t([[2, 2], [2, 2]])
    # h = 2 and 1; beta 0.5, delta 1: max(0, 1 - 1) = 0 and max(0, 1 - 0.5) = 0.5; mean 0.25
    loss, stats = preference_loss(cfg(loss="slic", beta=0.5, delta=1.0), pi, ref, n, ranks, valid)
    assert_close(loss, torch.tensor(0.25), **ATOL)
    # SFT term: NLL per token of the best completions, (1 + 2) / (2 + 2) = 0.75, weight 0.1 -> + 0.075
    loss, stats = preference_loss(cfg(loss="slic", beta=0.5, delta=1.0, slic_sft_weight=0.1), pi, ref, n, ranks, valid)
    assert_close(loss, torch.tensor(0.325), **ATOL)
    assert stats["nll"] == pytest.approx(0.75)


def test_orpo_mean_logprob_odds_and_nll():
    ranks, valid = t([[1, 2]], torch.long), t([[1, 1]], torch.bool)
    # mean log-probs log 0.5 (2 tokens) and log 0.2 (3 tokens): log odds 0 and log(0.2/0.8) = -1.386294
    pi = t([[2 * math.log(0.5), 3 * math.log(0.2)]])
    loss, stats = preference_loss(cfg(loss="orpo", orpo_lambda=0.1), pi, None, t([[2, 3]]), ranks, valid)
    # OR term: -log sigmoid(1.386294) = log(1 + 0.25) = 0.223144, x 0.1; NLL on the winner: log 2 per token
    assert_close(loss, torch.tensor(0.69314718 + 0.0223144), **ATOL)
    assert stats["reward_accuracy"] == 1.0 and "rewards_chosen" not in stats
    # near log-prob 0 (a certain winner): finite loss and gradient
    pi = t([[-1e-9, 3 * math.log(0.2)]]).requires_grad_()
    loss, _ = preference_loss(cfg(loss="orpo"), pi, None, t([[2, 3]]), ranks, valid)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pi.grad).all()


def test_kto_batch_reference_point_from_mismatched_pairs():
    pi, ref, desirable = t([-3.0, -6.0]), t([-5.0, -5.0]), t([True, False], torch.bool)
    # z0 = mean(pi_kl - ref_kl) = mean(1, 3) = 2; r = [2, -1], beta 0.5
    # desirable: 1 * (1 - sigmoid(0.5 * (2 - 2))) = 0.5; undesirable: 2 * (1 - sigmoid(0.5 * (2 + 1))) = 0.364851
    loss, stats = kto_batch_loss(cfg(loss="kto", beta=0.5, lambda_d=1.0, lambda_u=2.0), pi, ref, desirable,
                                 t([-4.0, -4.0]), t([-5.0, -7.0]))
    assert_close(loss, torch.tensor((0.5 + 2 * (1 - 0.81757448)) / 2), **ATOL)
    assert stats["kl_z0"] == pytest.approx(2.0)
    assert stats["reward_accuracy"] == 0.5  # desirable sits exactly at z0 (not above); undesirable below it
    # a negative batch KL estimate is clamped to 0: desirable 1 - sigmoid(1) = 0.268941
    loss, stats = kto_batch_loss(cfg(loss="kto", beta=0.5), pi[:1], ref[:1], desirable[:1], t([-9.0]), t([-5.0]))
    assert stats["kl_z0"] == 0.0
    assert_close(loss, torch.tensor(1 - 0.73105858), **ATOL)


def test_grid_helpers_mixed_k():
    groups = [Group([1], [[2], [3], [4]], [1, 2, 2]), Group([5], [[6], [7]], [2, 1])]
    prompts, comps, owner = flatten(groups)
    assert prompts == [[1], [5]] and comps == [[2], [3], [4], [6], [7]] and owner == [0, 0, 0, 1, 1]
    grid = to_grid(t([1.0, 2.0, 3.0, 4.0, 5.0]), groups)
    assert grid.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]]
    ranks, valid = grid_ranks(groups)
    assert ranks.tolist() == [[1, 2, 2], [2, 1, 0]] and valid.tolist() == [[True] * 3, [True, True, False]]


# ----------------------------------------------------------------------------- encoding and forward

@pytest.fixture(scope="module")
def tok():
    words = "apple banana cherry delta echo foxtrot golf hotel india juliet kilo lima".split()
    texts = [f"say {a} {b}:" for a in words for b in words] + ["good answer here", "bad reply there"]
    return train_tokenizer(texts * 2, 300)


def test_encode_group_truncation_and_empty_prompt(tok):
    eos = tok.eos_token_id
    p, cs, n = encode_group("", ["good answer here"], tok, 64)
    assert p == [eos] and cs[0][-1] == eos and n == 0  # every completion token gets scored
    long_prompt = " ".join(["say apple banana:"] * 20)
    p, cs, n = encode_group(long_prompt, ["good", "bad reply there"], tok, 16)
    full_p = tok(long_prompt, add_special_tokens=False)["input_ids"]
    assert p == full_p[-len(p):]  # the prompt keeps its end, shared by all completions
    assert all(len(p) + len(c) <= 16 for c in cs) and n == 0
    p, cs, n = encode_group("say", ["good answer here " * 10], tok, 12)
    assert len(p) + len(cs[0]) == 12 and n == 1


def test_kto_split_of_rankings_and_mismatched_pairs(tok, tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"prompt": "say apple:", "completions": ["a", "b", "c", "d"], "ranks": [2, 1, 3, 3]}) + "\n"
                    + json.dumps({"prompt": "say kilo:", "chosen": "good", "rejected": "bad"}) + "\n"
                    + json.dumps({"prompt": "say lima:", "completions": ["x", "y"], "ranks": [1, 1]}) + "\n")
    groups, info = direct.load_groups(str(path), cfg(loss="kto", kto_from="rankings"), tok, "data.train")
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    # best rank desirable, every worst-ranked completion undesirable, rank 2 of 3 dropped; all-tied record skipped
    assert [(g.completions[0], g.desirable) for g in groups] == [
        (enc("b"), True), (enc("c"), False), (enc("d"), False), (enc("good"), True), (enc("bad"), False)]
    assert info["skipped_no_pair"] == 1
    # KTO's mismatched completion: the nearest earlier example of ANOTHER prompt (cyclically)
    assert [g.kl_completion for g in groups] == [enc("bad"), enc("bad"), enc("bad"), enc("d"), enc("d")]


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama", "qwen2"])
def test_shared_prefix_forward_matches_plain_forward(tok, family):
    model = new_model(ModelInit(family=family, d_model=32, n_layers=2, n_heads=4, max_len=64), tok, seed=0)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    prompts = [enc("say apple banana:"), enc("say kilo:"), [tok.eos_token_id]]
    comps = [enc(" good answer here") + [tok.eos_token_id], enc(" bad"), enc(" good") + [tok.eos_token_id],
             enc(" bad reply there"), enc("hello")]
    owner = [0, 0, 1, 1, 2]
    fast, n_fast = completion_logps(model, prompts, comps, owner, tok.pad_token_id)
    g_fast = torch.autograd.grad(fast.sum(), list(model.parameters()))
    slow, n_slow = completion_logps_full(model, prompts, comps, owner, tok.pad_token_id)
    g_slow = torch.autograd.grad(slow.sum(), list(model.parameters()))
    assert n_fast.tolist() == n_slow.tolist() == [len(c) for c in comps]
    assert_close(fast, slow, atol=2e-5, rtol=1e-5)
    for a, b in zip(g_fast, g_slow):
        assert_close(a, b, atol=2e-5, rtol=1e-4)
    # completions in length buckets (2 per pass, each with its owners' prompt cache): the same values and gradients
    for buckets in (0, 2):
        part, n_part = completion_logps(model, prompts, comps, owner, tok.pad_token_id, bucket_rows=buckets)
        assert n_part.tolist() == n_slow.tolist()
        assert_close(part, slow, atol=2e-5, rtol=1e-5)
        for a, b in zip(torch.autograd.grad(part.sum(), list(model.parameters())), g_slow):
            assert_close(a, b, atol=2e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- end to end

GOOD, BAD = " good answer here", " bad reply there"


@pytest.fixture(scope="module")
def world(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("dpo")
    model = new_model(ModelInit(family="gpt2", d_model=32, n_layers=2, n_heads=2, max_len=64), tok, seed=0)
    save_model(model, tok, d / "sft")
    words = "apple banana cherry delta echo foxtrot golf hotel india juliet kilo lima".split()
    prompts = [f"say {a} {b}:" for a in words for b in words[:3]]
    extra = [" good reply", " bad answer"]

    def write(name, rows):
        (d / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    # mixed K (2, 3, 4) with ties; one all-tied record (skipped, no pair)
    rankings = []
    for i, p in enumerate(prompts[:24]):
        k = 2 + i % 3
        rankings.append({"prompt": p, "completions": [GOOD, BAD, *extra][:k], "ranks": [1, 3, 2, 3][:k] if k > 2 else [1, 2]})
    rankings.append({"prompt": "say golf:", "completions": [GOOD, BAD], "ranks": [1, 1]})
    write("rankings.jsonl", rankings)
    write("val.jsonl", [{"prompt": p, "chosen": GOOD, "rejected": BAD} for p in prompts[24:30]])
    write("unpaired.jsonl", [{"prompt": p, "completion": GOOD if i % 2 else BAD, "label": bool(i % 2)}
                             for i, p in enumerate(prompts[:24])])
    return d


def dpo(world, out, *args):
    return cli.main(["dpo", f"model={world / 'sft'}", f"out={world / out}", f"ref_cache={world / 'cache'}",
                     "batch_size=8", "epochs=1", "optim.lr=3e-3", "optim.warmup_steps=0", *args])


def margin(model_dir, world) -> float:
    """Mean log pi(GOOD) - log pi(BAD) over the training prompts."""
    model, tok = load_causal_lm(model_dir)
    model.eval()
    prompts = [tok(json.loads(l)["prompt"], add_special_tokens=False)["input_ids"]
               for l in (world / "unpaired.jsonl").read_text().splitlines()]
    comps = [tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in (GOOD, BAD)]
    with torch.no_grad():
        lp, _ = completion_logps(model, prompts, comps * len(prompts), [i for i in range(len(prompts)) for _ in comps],
                                 tok.pad_token_id)
    return (lp[0::2] - lp[1::2]).mean().item()


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("INSTRUCTKIT_QUIET", "1")


@pytest.mark.parametrize("loss,data,extra", [
    ("dpo", "rankings.jsonl", ["data.val=VAL", "select.by=accuracy"]),
    ("cdpo", "rankings.jsonl", []),
    ("ipo", "rankings.jsonl", []),
    ("slic", "rankings.jsonl", ["slic_sft_weight=0.1"]),
    ("kto", "unpaired.jsonl", []),
    ("kto", "rankings.jsonl", ["kto_from=rankings", "data.val=VAL", "select.by=loss"]),
    ("orpo", "rankings.jsonl", ["data.val=VAL"]),
])
def test_every_loss_end_to_end(world, loss, data, extra):
    out = f"run-{loss}-{len(extra)}"
    extra = [e.replace("VAL", str(world / "val.jsonl")) for e in extra]
    assert dpo(world, out, f"loss={loss}", f"data.train={world / data}", *extra) == 0
    meta = json.loads((world / out / "instructkit.json").read_text())
    assert meta["complete"] and meta["stage"] == "dpo" and meta["config"]["loss"] == loss
    assert meta["reference"]["forward"] == "shared-prefix"
    rows = [json.loads(l) for l in (world / out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)) and len(rows) >= 3  # logged every step
    assert all(math.isfinite(r["loss"]) for r in rows)
    if loss != "kto":
        assert {"reward_accuracy", "logps_chosen", "logps_rejected"} <= rows[0].keys()
    if loss not in ("kto", "orpo"):
        assert {"rewards_chosen", "rewards_rejected", "reward_margin"} <= rows[0].keys()
    if "data.val" in " ".join(extra):
        assert "val_loss" in meta["metrics"] and "val_reward_accuracy" in meta["metrics"]
        assert "val_kl" in meta["metrics"]  # KL to the reference on responses sampled for held-out prompts
    # every trainable parameter tensor changed, and the chosen-vs-rejected margin grew
    before, _ = load_causal_lm(world / "sft")
    after, _ = load_causal_lm(world / out)
    unchanged = [n for (n, a), b in zip(before.named_parameters(), after.parameters()) if torch.equal(a, b)]
    assert unchanged == []
    assert margin(world / out, world) > margin(world / "sft", world) + 0.05


def test_reference_logps_cached_and_reused(world):
    assert dpo(world, "cache-a", f"data.train={world / 'rankings.jsonl'}", f"data.val={world / 'val.jsonl'}",
               "ref_cache=" + str(world / "cache2")) == 0
    passes = direct.REFERENCE_PASSES
    first = json.loads((world / "cache-a" / "instructkit.json").read_text())["reference"]
    assert first["cache_hit"] is False
    # a second run (another output, another loss) reads the same cache: no reference pass at all
    assert dpo(world, "cache-b", "loss=ipo", f"data.train={world / 'rankings.jsonl'}",
               f"data.val={world / 'val.jsonl'}", "ref_cache=" + str(world / "cache2")) == 0
    second = json.loads((world / "cache-b" / "instructkit.json").read_text())["reference"]
    assert second["cache_hit"] is True and second["val_cache_hit"] is True and second["cache"] == first["cache"]
    assert direct.REFERENCE_PASSES == passes


def test_resume_after_kill_gives_identical_weights(world, monkeypatch):
    from safetensors.torch import load_file
    from instructkit.run import RunDir

    args = [f"data.train={world / 'rankings.jsonl'}", "epochs=2", "save_every=2"]
    assert dpo(world, "full", *args) == 0
    original = RunDir.save_checkpoint

    def save_then_die(self, state):
        original(self, state)
        raise KeyboardInterrupt  # killed right after the step-2 checkpoint
    monkeypatch.setattr(RunDir, "save_checkpoint", save_then_die)
    assert dpo(world, "killed", *args) == 130
    assert not (world / "killed" / "instructkit.json").exists()
    monkeypatch.setattr(RunDir, "save_checkpoint", original)
    assert dpo(world, "killed", *args) == 0
    a, b = load_file(world / "full" / "model.safetensors"), load_file(world / "killed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda d: [json.loads(l)["step"] for l in (world / d / "metrics.jsonl").read_text().splitlines()]
    assert rows("killed") == rows("full") == list(range(1, 7))


@pytest.mark.parametrize("line,args,expect", [
    ('{"prompt": "p", "completions": ["a", "b"], "ranks": [1]}', [], "bad.jsonl:2: field 'ranks'"),
    ('{"prompt": "p", "chosen": "a"}', [], "bad.jsonl:2: field 'rejected'"),
    ('{"prompt": "p", "completion": "a", "label": true}', [], "bad.jsonl:2: field 'completions'"),
    ('{"prompt": "p", "completion": "a", "label": "yes"}', ["loss=kto"], "bad.jsonl:2: field 'label'"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b"}', ["loss=cdpo", "label_smoothing=0.5"], "field 'label_smoothing'"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b"}', ["select.by=accuracy"], "field 'data.val'"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b"}', ["loss=simpo"], "field 'loss'"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b"}', ["model=/nonexistent"], "/nonexistent"),
])
def test_bad_input_exits_2_and_writes_nothing(world, capsys, line, args, expect):
    good = '{"prompt": "p", "completions": ["a", "b"], "ranks": [1, 2]}' if "kto" not in " ".join(args) else \
        '{"prompt": "p", "completion": "a", "label": true}'
    bad = world / "bad.jsonl"
    bad.write_text(good + "\n" + line + "\n")
    out = world / "bad-out"
    assert dpo(world, "bad-out", f"data.train={bad}", *args) == 2
    assert expect in capsys.readouterr().err
    assert not out.exists()


def test_wrong_record_kind_for_the_loss_says_what_to_do(world, capsys):
    assert dpo(world, "kind-out", f"data.train={world / 'unpaired.jsonl'}") == 2
    assert "unpaired (labelled) records train loss=kto" in capsys.readouterr().err
    assert dpo(world, "kind-out", "loss=kto", f"data.train={world / 'rankings.jsonl'}") == 2
    assert "pass kto_from=rankings" in capsys.readouterr().err
    assert not (world / "kind-out").exists()


def test_help_lists_every_loss_parameter(capsys):
    assert cli.main(["dpo", "--help"]) == 0
    text = capsys.readouterr().out
    for name in ("loss", "beta", "label_smoothing", "tau", "delta", "slic_sft_weight", "lambda_d", "lambda_u",
                 "orpo_lambda", "kto_from", "data.train", "select.by", "ref_cache"):
        assert f"  {name} (" in text


def test_fast_path_with_rows_near_the_position_limit():
    """A long prompt with a short completion next to a short prompt with a long completion: the
    short row's padding runs past the position table; it must be clamped (masked anyway), and the
    fast path must still equal the plain route."""
    import torch as _torch

    from instructkit.config import ModelInit
    from instructkit.models import new_model, train_tokenizer
    from instructkit.stages.direct import completion_logps, completion_logps_full

    tok = train_tokenizer(["a b c d e f g h i j k l m n o p"] * 4, 300)
    model = new_model(ModelInit(family="gpt2", d_model=32, n_layers=2, n_heads=2, max_len=32), tok, seed=0)
    model.eval()
    prompts = [list(range(5, 5 + 28)), [7, 8]]  # 28 + 3 and 2 + 29 tokens: both fit in 32 positions
    completions = [[9, 10, 11], list(range(20, 49))]
    with _torch.no_grad():
        fast, n = completion_logps(model, prompts, completions, [0, 1], tok.pad_token_id)
        plain, _ = completion_logps_full(model, prompts, completions, [0, 1], tok.pad_token_id)
    assert n.tolist() == [3, 29]
    _torch.testing.assert_close(fast, plain, atol=1e-4, rtol=1e-5)
