"""Few-shot prompting in `instructkit eval` (evaluate/fewshot.py): the prompt as pretraining answer
keys write it, the shots drawn per prompt, the answer cut at its first newline, and an end-to-end
eval with a few-shot model on the tiny sandbox chain."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import run_cli  # noqa: E402
from instructkit.evaluate.fewshot import answer_key_pair, cut_answer, fewshot_prompt, pick_shots  # noqa: E402
from sandbox_chain import tiny_chain  # noqa: E402,F401

DEMOS = [("copy the words : sun hat\n", "sun hat"),
         ("count the words : cup box bell\n", "3"),
         ("what river is vana on ?\n", "vana is on the\nriver lo")]  # a newline inside an answer


def test_fewshot_prompt_by_hand():
    text, kept = fewshot_prompt("sort the digits : 3 1 2\n", DEMOS[:2])
    assert text == ("copy the words : sun hat\nsun hat\n"
                    "count the words : cup box bell\n3\n"
                    "sort the digits : 3 1 2\n")
    assert kept == 2
    # the same format as the world's corpus/fewshot.jsonl probes: "instruction\nanswer\n" pairs
    assert answer_key_pair("what river is vana on ?\n", DEMOS[2][1]) == "what river is vana on ?\nvana is on the river lo\n"
    assert fewshot_prompt("reverse the words : a b", [])[0] == "reverse the words : a b\n"


def test_shots_that_do_not_fit_are_dropped_from_the_front():
    words = lambda s: len(s.split())  # noqa: E731  (a stand-in tokenizer: one token a word)
    full, _ = fewshot_prompt("sort the digits : 3 1 2\n", DEMOS[:2])
    assert words(full) == 23
    text, kept = fewshot_prompt("sort the digits : 3 1 2\n", DEMOS[:2], words, budget=22)
    assert (text, kept) == ("count the words : cup box bell\n3\nsort the digits : 3 1 2\n", 1)
    text, kept = fewshot_prompt("sort the digits : 3 1 2\n", DEMOS[:2], words, budget=3)
    assert (text, kept) == ("sort the digits : 3 1 2\n", 0)  # the prompt itself is never cut
    assert fewshot_prompt("sort the digits : 3 1 2\n", DEMOS[:2], words, budget=23)[1] == 2


def test_pick_shots_is_seeded_and_never_the_prompt_itself():
    demos = [(f"copy the words : w{i}\n", f"w{i}") for i in range(20)]
    prompt = "copy the words : w7\n"
    for seed in range(20):
        shots = pick_shots(prompt, demos, 19, seed)
        assert len(shots) == 19 and (prompt, "w7") not in shots and len(set(shots)) == 19
    assert pick_shots(prompt, demos, 4, 0) == pick_shots(prompt, demos, 4, 0)
    assert pick_shots(prompt, demos, 4, 0) != pick_shots(prompt, demos, 4, 1)
    assert pick_shots(prompt, demos, 4, 0) != pick_shots("copy the words : w8\n", demos, 4, 0)
    assert len(pick_shots(prompt, demos[:3], 8, 0)) == 3


def test_pick_shots_prefers_one_line_completions():
    demos = [(f"copy the words : w{i}\n", f"w{i}\nhope this helps" if i % 2 else f"w{i}") for i in range(10)]
    shots = pick_shots("count the words : a b\n", demos, 4, 0)
    assert len(shots) == 4 and all("\n" not in c for _, c in shots)
    shots = pick_shots("count the words : a b\n", demos, 7, 0)  # five one-line ones, then two of the others
    assert sum("\n" not in c for _, c in shots) == 5 and len(set(shots)) == 7


def test_cut_answer_at_the_first_newline():
    assert cut_answer("sun hat\ncopy the words : a b\na b") == "sun hat"
    assert cut_answer("no newline at all") == "no newline at all"
    assert cut_answer("\nanswer on the next line") == ""
    assert cut_answer("") == ""


def test_eval_with_a_fewshot_model_end_to_end(tiny_chain, tmp_path, capsys):
    from instructkit.data.encode import encode_text
    from instructkit.generation import SamplingParams, generate_texts
    from instructkit.models import load_causal_lm

    w, base, sft = tiny_chain["world"], tiny_chain["base"], tiny_chain["sft"]
    out = tmp_path / "eval"
    code, stdout, err = run_cli(["eval", f"models=sft={sft},base={base},base_fs={base}", "fewshot.base_fs=3",
                                 "baseline=sft", f"prompts={w}/prompts/eval.jsonl", f"world={w}", "n_prompts=12",
                                 "max_new_tokens=16", "threads=1", f"out={out}"], capsys)
    assert code == 0, err
    assert "few-shot: " in stdout
    res = json.loads((out / "eval.json").read_text())["models"]
    assert "fewshot" not in res["base"] and res["base_fs"]["fewshot"]["k"] == 3
    assert 0 < res["base_fs"]["fewshot"]["mean_shots"] <= 3
    assert res["base_fs"]["win_rate"]["n"] == 12
    assert res["base_fs"]["alignment_tax"] == res["base"]["alignment_tax"]  # one checkpoint, one tax
    rows = [json.loads(l) for l in (out / "samples.jsonl").read_text().splitlines()]
    assert all("\n" not in r["base_fs"] for r in rows)  # the judge sees the cut answer only

    # the samples are exactly: K seeded demonstrations of other prompts in the answer-key format,
    # the prompt, sampling, the cut at the first newline
    demos = [(d["prompt"], d["completion"]) for d in map(json.loads, (w / "demonstrations.jsonl").read_text().splitlines())]
    prompts = [r["prompt"] for r in rows]
    model, tok = load_causal_lm(str(base))
    budget = model.config.max_position_embeddings - 16
    texts = [fewshot_prompt(p, pick_shots(p, demos, 3, 0), lambda x: len(encode_text(tok, x)), budget)[0]
             for p in prompts]
    assert all(t.endswith(p) for t, p in zip(texts, prompts)) and any(t != p for t, p in zip(texts, prompts))
    raw = generate_texts(model, tok, texts, SamplingParams(max_new_tokens=16, temperature=1.0), batch_size=64, seed=0)
    assert [cut_answer(s) for s in raw] == [r["base_fs"] for r in rows]
    assert any("\n" in s for s in raw)  # the cut did something

    # fewshot_cut=false: the judge sees the whole continuation, as it sees a bare model's
    whole = tmp_path / "eval_whole"
    code, _, err = run_cli(["eval", f"models=sft={sft},base_fs={base}", "fewshot.base_fs=3", "fewshot_cut=false",
                            "baseline=sft", f"prompts={w}/prompts/eval.jsonl", f"world={w}", "n_prompts=12",
                            "max_new_tokens=16", "alignment_tax=false", "threads=1", f"out={whole}"], capsys)
    assert code == 0, err
    assert [json.loads(l)["base_fs"] for l in (whole / "samples.jsonl").read_text().splitlines()] == raw


def test_fewshot_names_a_model(tiny_chain, tmp_path, capsys):
    w, base = tiny_chain["world"], tiny_chain["base"]
    common = [f"models=base={base}", "baseline=base", f"prompts={w}/prompts/eval.jsonl", f"out={tmp_path / 'e'}"]
    code, _, err = run_cli(["eval", *common, f"world={w}", "fewshot.nobody=3"], capsys)
    assert code == 2 and "fewshot.nobody" in err and "not one of the models" in err
    code, _, err = run_cli(["eval", *common, f"world={w}", "fewshot.base=0"], capsys)
    assert code == 2 and "fewshot.base" in err
    code, _, err = run_cli(["eval", *common, "judge=gold", "fewshot.base=2"], capsys)
    assert code == 2 and "fewshot_data" in err
