"""PPO / PPO-ptx and best-of-n: the details that make PPO work, and the commands end to end.
(GAE, whitening, the KL controller, reward shaping and value clipping are tested on hand-computed
tensors in test_losses.py; here: the same details through the stage's own code paths.)"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from instructkit.cli import main
from instructkit.generation import SamplingParams, generate, left_pad
from instructkit.models import load_causal_lm
from instructkit.stages.bon import kl_bound
from instructkit.stages.ppo import apply_eos_penalty, bucketed, response_logprobs, response_values

sys.path.insert(0, str(Path(__file__).parent))
from sandbox_chain import tiny_chain  # noqa: E402,F401


def ppo_argv(chain, out, *extra):
    w = chain["world"]
    return ["ppo", f"policy={chain['sft']}", f"reward_model={chain['rm']}", f"prompts={w}/prompts/ppo.jsonl",
            f"eval_prompts={w}/prompts/eval.jsonl", "episodes=48", "rollout_batch=16", "minibatch=8",
            "ppo_epochs=2", "eval_every=2", "eval_n=16", f"gold=sandbox:{w}", f"eval_scorer=sandbox:{w}",
            "lr=1e-4", "value_lr=1e-4", "warmup_iterations=1", "require_gate=false", f"out={out}", *extra]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_and_training_logprobs_agree(tiny_chain, temperature):
    """Temperature consistency: the sampler's log-probs equal the training pass's for the same tokens."""
    model, tok = load_causal_lm(tiny_chain["sft"])
    model.eval()
    prompts = [json.loads(l)["prompt"] for l in (tiny_chain["world"] / "prompts/ppo.jsonl").read_text().splitlines()[:6]]
    ids, attn = left_pad([tok(p, add_special_tokens=False)["input_ids"] for p in prompts], tok.pad_token_id)
    gen = generate(model, ids, attn, SamplingParams(max_new_tokens=12, temperature=temperature),
                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                   generator=torch.Generator().manual_seed(0), return_logprobs=True)
    full_attn = torch.cat([attn, gen.response_mask.long()], 1)
    with torch.no_grad():
        lp, ent = response_logprobs(model, gen.sequences, full_attn, ids.shape[1], temperature)
    m = gen.response_mask.bool()
    assert m.any()
    torch.testing.assert_close(lp[m], gen.logprobs[m], atol=1e-5, rtol=0)
    assert (ent[m] > 0).all()
    # length buckets (2 rows per pass, each cut to its own longest prompt and response): the same
    # log-probs and gradients at every response token, 0 past a row's response
    P = ids.shape[1]
    assert (full_attn[:, :P].sum(1).max() - full_attn[:, :P].sum(1).min()) > 0  # prompts of several lengths
    fn = lambda *a: response_logprobs(model, *a, temperature)  # noqa: E731
    whole, _ = fn(gen.sequences, full_attn, P)
    parts, _ = bucketed(fn, gen.sequences, full_attn, P, 2)
    assert parts.shape == whole.shape and (parts[~m] == 0).all()
    torch.testing.assert_close(parts[m], whole[m], atol=1e-5, rtol=0)
    g_whole = torch.autograd.grad(whole[m].sum(), list(model.parameters()))
    g_parts = torch.autograd.grad(parts[m].sum(), list(model.parameters()))
    for a, b in zip(g_whole, g_parts):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_missing_eos_penalty_replaces_score():
    scores = torch.tensor([0.5, -0.2, 1.5])
    ended = torch.tensor([True, False, True])
    assert apply_eos_penalty(scores, ended, -1.0).tolist() == [0.5, -1.0, 1.5]
    assert apply_eos_penalty(scores, ended, 0.0).tolist() == pytest.approx([0.5, -0.2, 1.5])


def test_value_head_on_rm_scale(tiny_chain):
    """Per-token values read the RM's scalar head at every position, normalised like the RM."""
    from instructkit.reward import RewardScorer, load_reward_model

    model, tok, meta = load_reward_model(tiny_chain["rm"])
    norm = meta["normalization"]
    prompt, response = "copy the words : cat dog\n", "cat dog"
    ids = tok(prompt + response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    seq = torch.tensor([ids])
    P = len(tok(prompt, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        v = response_values(model, seq, torch.ones_like(seq), P, norm["gain"], norm["bias"])
    # the value after the last token is the RM score of the whole response
    rm_score = RewardScorer.load(tiny_chain["rm"]).score([prompt], [response])[0]
    hidden = model.base_model(input_ids=seq).last_hidden_state
    raw_last = model.score(hidden)[0, -1, 0].item()
    assert raw_last * norm["gain"] + norm["bias"] == pytest.approx(rm_score, abs=1e-4)
    assert v.shape == (1, len(ids) - P)


def test_ppo_ptx_end_to_end(tiny_chain, tmp_path):
    out = tmp_path / "ppo_ptx"
    w = tiny_chain["world"]
    assert main(ppo_argv(tiny_chain, out, "ptx_coef=2.0", f"ptx_data={w}/corpus/train.jsonl", "ptx_per_episode=0.5",
                         "ptx_seq_len=32", "select=last", "bucket_rows=4")) == 0
    meta = json.loads((out / "instructkit.json").read_text())
    assert meta["complete"] and meta["stage"] == "ppo"
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for key in ("reward_rm", "reward_gold", "kl", "kl_k3", "kl_coef", "entropy", "response_length", "eos_rate",
                "clipfrac", "approx_kl", "vf_loss", "explained_variance", "ptx_loss", "time_rollout",
                "time_score", "time_train"):
        assert key in rows[-1], key
    assert "eval_score" in rows[1]
    before = load_file(tiny_chain["sft"] / "model.safetensors")
    after = load_file(out / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) >= len(before) * 0.9, f"only {len(changed)} of {len(before)} tensors changed"
    assert (out / "value_model" / "model.safetensors").exists()


def test_adaptive_kl_controller_moves_beta(tiny_chain, tmp_path):
    out = tmp_path / "ppo_adaptive"
    assert main(ppo_argv(tiny_chain, out, "kl.adaptive=true", "kl.target=100", "kl.horizon=160", "select=last",
                         "eval_prompts=")) == 0
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    # KL far below the target: e = -0.2 each iteration, beta <- beta * (1 - 0.2 * 16 / 160) = beta * 0.98
    assert [r["kl_coef"] for r in rows] == pytest.approx([0.02 * 0.98 ** (i + 1) for i in range(len(rows))])


def test_ppo_resume_after_kill(tiny_chain, tmp_path):
    """kill -9 mid-run, rerun: the final policy equals an uninterrupted run's."""
    from conftest import subprocess_env

    ref = tmp_path / "uninterrupted"
    assert main(ppo_argv(tiny_chain, ref, "select=last", "eval_prompts=", "save_every=1", "episodes=64")) == 0
    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "instructkit", *ppo_argv(tiny_chain, out, "select=last", "eval_prompts=",
                                                           "save_every=1", "episodes=64")]
    proc = subprocess.Popen(argv, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        m = out / "metrics.jsonl"
        if m.exists() and len(m.read_text().splitlines()) >= 2 and (out / "checkpoint").exists():
            break
        time.sleep(0.05)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if not (out / "instructkit.json").exists():
        assert (out / "checkpoint").exists()
    assert main(ppo_argv(tiny_chain, out, "select=last", "eval_prompts=", "save_every=1", "episodes=64")) == 0
    a, b = load_file(ref / "model.safetensors"), load_file(out / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_bad_input_exits_2_and_writes_nothing(tiny_chain, tmp_path, capsys):
    out = tmp_path / "bad"
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "ok\\n"}\n{"promt": "typo"}\n')
    rc = main(ppo_argv(tiny_chain, out, f"prompts={bad}"))
    err = capsys.readouterr().err
    assert rc == 2 and f"{bad}:2" in err and "'prompt'" in err
    assert not out.exists()
    rc = main(ppo_argv(tiny_chain, out, "ptx_coef=1.0"))
    assert rc == 2 and "ptx_data" in capsys.readouterr().err and not out.exists()
    rc = main(ppo_argv(tiny_chain, out, "eval_samples=0"))
    assert rc == 2 and "eval_samples" in capsys.readouterr().err and not out.exists()


def test_best_of_n(tiny_chain, tmp_path, capsys):
    out = tmp_path / "bon.jsonl"
    w = tiny_chain["world"]
    assert main(["bon", str(tiny_chain["sft"]), f"reward_model={tiny_chain['rm']}", f"prompts={w}/prompts/eval.jsonl",
                 "n=8", f"gold=sandbox:{w}", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert f"{math.log(8) - 7 / 8:.4f}" in printed  # log n - (n-1)/n = 1.2044
    summary = json.loads(Path(str(out) + ".summary.json").read_text())
    assert summary["kl_bound"] == pytest.approx(math.log(8) - 7 / 8)
    assert set(summary["curve"]) == {"1", "2", "4", "8"}
    # the RM's pick scores at least as high on the RM as a random sample, by construction
    assert summary["rm_best"] >= summary["rm_random"]
    recs = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(recs) == 45 and all("completion" in r and "prompt" in r for r in recs)
    # n_prompts: the first N prompts of the file only; a negative count is an error naming the field
    assert main(["bon", str(tiny_chain["sft"]), f"reward_model={tiny_chain['rm']}", f"prompts={w}/prompts/eval.jsonl",
                 "n=2", "n_prompts=5", f"out={tmp_path / 'five.jsonl'}"]) == 0
    first = [json.loads(l)["prompt"] for l in (w / "prompts/eval.jsonl").read_text().splitlines()[:5]]
    assert [json.loads(l)["prompt"] for l in (tmp_path / "five.jsonl").read_text().splitlines()] == first
    assert main(["bon", str(tiny_chain["sft"]), f"reward_model={tiny_chain['rm']}", f"prompts={w}/prompts/eval.jsonl",
                 "n_prompts=-1", f"out={tmp_path / 'bad.jsonl'}"]) == 2
    assert "n_prompts" in capsys.readouterr().err and not (tmp_path / "bad.jsonl").exists()


def test_kl_bound_formula():
    assert kl_bound(1) == 0.0
    assert kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    assert kl_bound(64) == pytest.approx(4.158883 - 0.984375, abs=1e-6)


def test_reward_hacking_detector_on_synthetic_trace():
    from instructkit.stages.ppo import detect_hacking

    # RM reward rises 0.1, 0.3, 0.6 while the judge falls 0.50, 0.45, 0.30: fires
    hacked = [{"reward_rm": r, "eval_score": j, "kl": k} for r, j, k in ((0.1, 0.5, 1), (0.3, 0.45, 2), (0.6, 0.3, 3))]
    assert any("RM reward rising" in m for m in detect_hacking(hacked, window=3))
    # both rising: healthy
    healthy = [{"reward_rm": r, "eval_score": j, "kl": 1.0} for r, j in ((0.1, 0.3), (0.3, 0.4), (0.6, 0.5))]
    assert detect_hacking(healthy, window=3) == []
    # KL slope 1 nat/iteration against a limit of 0.5 fires; against 2.0 it does not
    assert any("KL" in m for m in detect_hacking(hacked, window=3, kl_slope_max=0.5))
    assert not any("KL" in m for m in detect_hacking(hacked, window=3, kl_slope_max=2.0))
    # too few evaluations: silent
    assert detect_hacking(hacked[:2], window=3) == []


def test_gate_blocks_a_bad_rm_and_passes_a_good_one(tmp_path):
    from instructkit.errors import InputError
    from instructkit.stages.ppo import check_gate

    bad, good = tmp_path / "bad", tmp_path / "good"
    for d, gain in ((bad, -0.05), (good, 0.12)):
        d.mkdir()
        (d / "instructkit.json").write_text(json.dumps({"gates": {"bon_gain": gain, "bon_n": 8}}))
    with pytest.raises(InputError, match="gate"):
        check_gate(str(bad), required=True)
    check_gate(str(bad), required=False)
    check_gate(str(good), required=True)


def test_ppo_and_bon_with_a_spec_as_the_reward(tiny_chain, tmp_path, capsys):
    """A behaviour spec is a reward: bon picks by it; PPO trains on it with the RM's value head."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\nworkflows:\n  copy:\n    prompts: {task: copy}\n    match: '^copy'\n"
                    "    checks:\n      short: {max_words: 3}\n")
    w = tiny_chain["world"]
    out = tmp_path / "ppo_spec"
    assert main(ppo_argv(tiny_chain, out, f"reward_model=spec:{spec}", f"value_model={tiny_chain['rm']}",
                         "select=last", "eval_prompts=")) == 0
    assert json.loads((out / "instructkit.json").read_text())["inputs"]["reward_model"]["path"] == str(spec)
    rc = main(ppo_argv(tiny_chain, tmp_path / "no_value", f"reward_model=spec:{spec}"))
    assert rc == 2 and "value_model" in capsys.readouterr().err
    bon = tmp_path / "bon.jsonl"
    assert main(["bon", str(tiny_chain["sft"]), f"reward_model=spec:{spec}", f"prompts={w}/prompts/eval.jsonl",
                 "n=4", f"out={bon}"]) == 0


def test_value_warmup_freezes_the_policy(tiny_chain, tmp_path):
    """During value warm-up only the critic learns: 3 iterations of warm-up leave the policy as SFT."""
    out = tmp_path / "warm"
    assert main(ppo_argv(tiny_chain, out, "value_warmup_iterations=3", "select=last", "eval_prompts=")) == 0
    before = load_file(tiny_chain["sft"] / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    # no policy pass at all while it is frozen: only the critic's statistics are logged
    assert len(rows) == 3 and all("vf_loss" in r and "pg_loss" not in r and "entropy" not in r for r in rows)
    v0 = load_file(tiny_chain["rm"] / "model.safetensors")
    v1 = load_file(out / "value_model" / "model.safetensors")
    assert any(not torch.equal(v0[k], v1[k]) for k in v0 if k in v1)


def test_rloo_trains_without_a_value_model(tiny_chain, tmp_path, capsys):
    """advantage=rloo: k samples per prompt, each baselined by the others; no value model is
    loaded, trained or saved, and the policy moves."""
    out = tmp_path / "rloo"
    assert main(ppo_argv(tiny_chain, out, "advantage=rloo", "samples_per_prompt=4", "select=last",
                         "eval_prompts=")) == 0
    assert "no value model (RLOO)" in capsys.readouterr().out
    assert not (out / "value_model").exists()
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and "explained_variance" not in rows[0] and "vf_loss" not in rows[0]
    before = load_file(tiny_chain["sft"] / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # groups must tile the rollout, and rloo needs a second sample to compare with
    assert main(ppo_argv(tiny_chain, tmp_path / "bad1", "advantage=rloo", "samples_per_prompt=1")) == 2
    assert main(ppo_argv(tiny_chain, tmp_path / "bad2", "samples_per_prompt=3")) == 2
    assert "samples_per_prompt" in capsys.readouterr().err
    assert not (tmp_path / "bad1").exists() and not (tmp_path / "bad2").exists()


def test_evaluation_averages_several_samples_per_prompt(tiny_chain):
    """eval_samples = k: each held-out prompt is sampled k times (distinct samples) and the score is
    the mean over all k x n judged responses."""
    from instructkit.config import PPOConfig
    from instructkit.stages.ppo import _evaluate

    model, tok = load_causal_lm(tiny_chain["sft"])
    prompts = ["copy the words : cat dog\n", "write the word sun 2 times\n"]
    seen = []

    def judge(ps, rs):
        seen.append((list(ps), list(rs)))
        return [float(len(r)) for r in rs]

    cfg = PPOConfig(eval_samples=3, max_new_tokens=8)
    score = _evaluate(model, tok, prompts, prompts, judge, cfg)
    ps, rs = seen[0]
    assert ps == [prompts[0]] * 3 + [prompts[1]] * 3
    assert score == pytest.approx(sum(len(r) for r in rs) / 6)
    assert len(set(rs[:3])) > 1 or len(set(rs[3:])) > 1  # independent samples, not one sample copied
