"""instructkit.reward: the scalar-head model, last-real-token scoring, HF loading, normalisation.

`build_world` (also used by test_rm.py) makes a tiny tokenizer, tiny causal LMs and synthetic
rankings in which completions with more "good" words and fewer "bad" words are better."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from instructkit.config import ModelInit
from instructkit.errors import InputError
from instructkit.models import new_model, save_model, train_tokenizer
from instructkit.reward import (META_KEY, Normalization, RewardScorer, check_same_tokenizer, create_reward_model,
                                encode_response, normalize, quiet_transformers, reward_head, reward_scores,
                                score_sequences)

torch.set_num_threads(1)

POS, NEG = ["good", "great", "nice"], ["bad", "awful", "rude"]
NEU = ["the", "cat", "dog", "sat", "ran", "on", "mat", "far", "blue", "red", "tree", "sun"]


def _completion(rng):
    return " ".join(rng.choice(POS + NEG + NEU) for _ in range(rng.randint(2, 6)))


def _utility(text):
    words = text.split()
    return sum(w in POS for w in words) - sum(w in NEG for w in words)


def make_rankings(n: int, seed: int = 0, kmin: int = 2, kmax: int = 6) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randint(kmin, kmax)
        cs = [_completion(rng) for _ in range(k)]
        noisy = [_utility(c) + rng.gauss(0, 0.5) for c in cs]
        order = sorted(range(k), key=lambda j: -noisy[j])
        ranks = [0] * k
        for r, j in enumerate(order):
            ranks[j] = r + 1
        gold = [_utility(c) for c in cs]
        distinct = sorted(set(gold), reverse=True)
        out.append({"prompt": f"say {rng.choice(NEU)} {i % 7} :", "completions": cs, "ranks": ranks,
                    "gold_ranks": [distinct.index(u) + 1 for u in gold], "task": ["list", "facts"][i % 2],
                    "labeler": f"L{i % 3}"})
    return out


def write_jsonl(path, records):
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def build_world(root: Path, families=("gpt2",)) -> dict:
    """Tiny LMs (one per family) sharing one tokenizer, plus rankings and demonstrations."""
    rng = random.Random(1)
    texts = [_completion(rng) for _ in range(300)] + [f"say {w} {i} :" for w in NEU for i in range(7)]
    tok = train_tokenizer(texts, vocab_size=400)
    paths = {}
    for fam in families:
        m = new_model(ModelInit(family=fam, d_model=16, n_layers=1, n_heads=2, max_len=48), tok, seed=0)
        with quiet_transformers():
            save_model(m, tok, root / f"lm_{fam}")
        paths[fam] = str(root / f"lm_{fam}")
    paths["rankings"] = write_jsonl(root / "rankings.jsonl", make_rankings(60))
    paths["demos"] = write_jsonl(root / "demos.jsonl", [{"prompt": f"say {w} 1 :", "completion": f"the {w} is good"}
                                                        for w in NEU])
    return paths


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("rmworld"), families=("gpt2", "gpt_neox", "llama", "qwen2"))


FAMILIES = ["gpt2", "gpt_neox", "llama", "qwen2"]


def test_head_init_no_bias_and_pad_differs_from_eos(world):
    model, tok, fresh = create_reward_model(world["gpt2"], seed=3)
    head = reward_head(model)
    assert fresh and head.out_features == 1
    # HF's heads have no bias: the normalisation offset lives in config.json instead
    assert head.bias is None
    # N(0, 1/sqrt(d+1)) with d = 16: std 0.2425; 16 draws, so a loose check, plus exact reproducibility
    assert 0.08 < head.weight.std().item() < 0.45
    again, _, _ = create_reward_model(world["gpt2"], seed=3)
    assert torch.equal(reward_head(again).weight, head.weight)
    assert tok.pad_token_id != tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id


@pytest.mark.parametrize("family", FAMILIES)
def test_score_read_at_last_real_token_whatever_the_padding(world, family):
    model, tok, _ = create_reward_model(world[family], seed=0)
    model.eval()
    seqs = [encode_response(tok, "say cat 1 :", c, 48)[0] for c in ["good", "the cat sat on the mat far", "bad rude"]]
    with torch.no_grad():
        alone = [reward_scores(model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)).item() for s in seqs]
        T = max(map(len, seqs))
        pad = tok.pad_token_id
        right = torch.tensor([s + [pad] * (T - len(s)) for s in seqs])
        left = torch.tensor([[pad] * (T - len(s)) + s for s in seqs])
        rmask = (right != pad).long()
        lmask = (left != pad).long()
        by_right = reward_scores(model, right, rmask).tolist()
        by_left = reward_scores(model, left, lmask).tolist()
    assert by_right == pytest.approx(alone, abs=1e-5)
    assert by_left == pytest.approx(alone, abs=1e-5)
    # the last real token is EOS (appended) and it is what the head reads
    assert all(s[-1] == tok.eos_token_id for s in seqs)


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_rm_scores_the_same_through_auto_model(world, family, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model, tok, _ = create_reward_model(world[family], seed=0)
    meta = {"normalization": Normalization("demonstrations", 1.0, -0.25, 3, "test").__dict__,
            "template": {"kind": "plain", "system": ""}, "max_len": 48, "append_eos": True}
    setattr(model.config, META_KEY, meta)
    with quiet_transformers():
        save_model(model, tok, tmp_path / "rm")
        hf = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm"), num_labels=1).eval()
    prompts = ["say cat 1 :", "say dog 2 :", "say sun 3 :"]
    responses = ["good nice", "the cat sat on the mat", "awful"]
    scorer = RewardScorer.load(tmp_path / "rm")
    raw = scorer.raw_score(prompts, responses)
    seqs = scorer.encode(prompts, responses)
    T = max(map(len, seqs))
    ids = torch.tensor([s + [tok.pad_token_id] * (T - len(s)) for s in seqs])  # right padding
    with torch.no_grad():
        hf_scores = hf(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long()).logits.squeeze(-1).tolist()
    assert hf_scores == pytest.approx(raw, abs=1e-5)
    # the stored normalisation travels in config.json and is applied by one function
    assert hf.config.to_dict()[META_KEY]["normalization"]["bias"] == -0.25
    assert scorer.score(prompts, responses) == pytest.approx([r - 0.25 for r in raw], abs=1e-6)
    assert normalize(raw, hf.config.to_dict()[META_KEY]) == pytest.approx(scorer.score(prompts, responses))


def test_normalization_fit():
    raw = [1.0, 2.0, 3.0, 6.0]  # mean 3, population std sqrt((4 + 1 + 0 + 9) / 4) = 1.8708
    demo = Normalization.fit("demonstrations", raw)
    assert (demo.gain, demo.bias) == (1.0, -3.0)
    assert sum(normalize(raw, {"normalization": demo.__dict__})) == pytest.approx(0.0, abs=1e-12)
    ref = Normalization.fit("reference", raw)
    out = torch.tensor(normalize(raw, {"normalization": ref.__dict__}), dtype=torch.float64)
    assert ref.gain == pytest.approx(1 / math.sqrt(14 / 4))
    assert out.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert out.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-12)
    assert Normalization.fit("none", raw).bias == 0.0


def test_encode_response_truncates_prompt_first(world):
    _, tok, _ = create_reward_model(world["gpt2"])
    long_prompt = " ".join(["the cat sat"] * 30)
    ids, truncated = encode_response(tok, long_prompt, "good", 12)
    comp = tok("good", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert truncated and len(ids) == 12 and ids[-len(comp):] == comp
    ids, truncated = encode_response(tok, "say", "good", 12)
    assert not truncated and ids[-1] == tok.eos_token_id


def test_score_sequences_keeps_input_order(world):
    model, tok, _ = create_reward_model(world["gpt2"])
    seqs = [encode_response(tok, "say", c, 48)[0] for c in ["the cat sat on the mat far", "good", "bad", "the dog"]]
    batched = score_sequences(model, seqs, tok.pad_token_id, batch_size=3)
    one_by_one = [score_sequences(model, [s], tok.pad_token_id)[0] for s in seqs]
    assert batched == pytest.approx(one_by_one, abs=1e-5)


def test_tokenizer_mismatch_is_refused(world, tmp_path):
    _, tok, _ = create_reward_model(world["gpt2"])
    other = train_tokenizer(["completely different words here", "zebra quartz"] * 20, vocab_size=300)
    with pytest.raises(InputError, match="tokenizer differs"):
        check_same_tokenizer(tok, other, "policy_dir")
    check_same_tokenizer(tok, tok, "policy_dir")
