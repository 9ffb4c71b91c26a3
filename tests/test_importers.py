"""instructkit.data.importers and `instructkit import`: HH-RLHF transcripts, TRL pairs and
prompt-completion records, ratings -> contract records that `instructkit.data.load` reads."""
from __future__ import annotations

import json
import subprocess

import pytest

from conftest import PYTHON, run_cli, subprocess_env
from instructkit.data import load
from instructkit.data.importers import (hh_messages, implicit_prompt, import_hh, import_rating,
                                        import_trl_completion, import_trl_pair, plain_chat_text, split_hh)
from instructkit.errors import InputError

# ---------------------------------------------------------------- hand-written HH-RLHF records

SINGLE = {
    "chosen": "\n\nHuman: What is the capital of France?\n\nAssistant: Paris is the capital of France.",
    "rejected": "\n\nHuman: What is the capital of France?\n\nAssistant: I don't know.",
}
MULTI = {
    "chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke about cats."
              "\n\nAssistant: Why did the cat sit on the computer? To keep an eye on the mouse.",
    "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke about cats."
                "\n\nAssistant: No.",
}
# the two answers share their first word: the prompt still ends at "Assistant:"
SHARED_START = {
    "chosen": "\n\nHuman: Is water wet?\n\nAssistant: I think it is, yes.",
    "rejected": "\n\nHuman: Is water wet?\n\nAssistant: I think not.",
}
MULTI_PROMPT = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke about cats.\n\nAssistant:"


def test_split_single_turn():
    prompt, c, r = split_hh(SINGLE["chosen"], SINGLE["rejected"])
    assert prompt == "\n\nHuman: What is the capital of France?\n\nAssistant:"
    assert (c, r) == (" Paris is the capital of France.", " I don't know.")
    assert prompt + c == SINGLE["chosen"] and prompt + r == SINGLE["rejected"]


def test_split_multi_turn_keeps_the_history():
    prompt, c, r = split_hh(MULTI["chosen"], MULTI["rejected"])
    assert prompt == MULTI_PROMPT
    assert c == " Why did the cat sit on the computer? To keep an eye on the mouse."
    assert r == " No."
    assert hh_messages(prompt) == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke about cats."},
    ]


def test_split_when_answers_share_a_prefix():
    prompt, c, r = split_hh(SHARED_START["chosen"], SHARED_START["rejected"])
    assert prompt == "\n\nHuman: Is water wet?\n\nAssistant:"
    assert (c, r) == (" I think it is, yes.", " I think not.")


def test_import_hh_pair_text_and_messages():
    kind, rec = import_hh(dict(SINGLE, id=3), "hh.jsonl", 1)
    assert kind == "pair"
    assert rec == {"prompt": "\n\nHuman: What is the capital of France?\n\nAssistant:",
                   "chosen": " Paris is the capital of France.", "rejected": " I don't know.", "id": 3}
    kind, rec = import_hh(MULTI, "hh.jsonl", 1, style="messages")
    assert rec["prompt"] == MULTI_PROMPT and rec["chosen"] == MULTI["chosen"][len(MULTI_PROMPT):]
    assert [m["role"] for m in rec["messages"]] == ["user", "assistant", "user"]


def test_import_hh_as_demonstrations():
    kind, rec = import_hh(MULTI, "hh.jsonl", 1, to="demonstrations")
    assert kind == "demonstration"
    assert rec == {"prompt": MULTI_PROMPT,
                   "completion": " Why did the cat sit on the computer? To keep an eye on the mouse."}
    _, rec = import_hh(MULTI, "hh.jsonl", 1, to="demonstrations", style="messages")
    assert rec == {"messages": [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke about cats."},
        {"role": "assistant", "content": "Why did the cat sit on the computer? To keep an eye on the mouse."}]}


@pytest.mark.parametrize("obj, field, words", [
    ({"chosen": "Just text", "rejected": "Other text"}, "chosen", "no '\\n\\nAssistant:' turn shared"),
    ({"chosen": SINGLE["chosen"]}, "rejected", "missing required field"),
    ({"chosen": SINGLE["chosen"], "rejected": 4}, "rejected", "expected a string, got int"),
    (dict(SINGLE, rejected=SINGLE["chosen"]), "rejected", "identical to chosen"),
    # they differ at the first answer, and both continue with more turns
    ({"chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d",
      "rejected": "\n\nHuman: a\n\nAssistant: x\n\nHuman: c\n\nAssistant: d"}, "chosen", "differ before"),
    ({"chosen": "Preamble\n\nHuman: a\n\nAssistant: b", "rejected": "Preamble\n\nHuman: a\n\nAssistant: c"},
     "chosen", "text before the first"),
])
def test_import_hh_errors(obj, field, words):
    with pytest.raises(InputError) as e:
        import_hh(obj, "hh.jsonl", 7)
    assert (e.value.path, e.value.line, e.value.field) == ("hh.jsonl", 7, field)
    assert words in e.value.message


# ---------------------------------------------------------------- TRL

def test_trl_explicit_prompt():
    kind, rec = import_trl_pair({"prompt": "2+2=", "chosen": " 4", "rejected": " 5", "src": "x"}, "f", 1)
    assert (kind, rec) == ("pair", {"prompt": "2+2=", "chosen": " 4", "rejected": " 5", "src": "x"})


@pytest.mark.parametrize("chosen, rejected, prompt", [
    ("Q: 2+2? A: four", "Q: 2+2? A: five", "Q: 2+2? A:"),   # differ inside the word 'f...': cut before it
    ("The sky is blue", "The sky is green", "The sky is"),
    ("Hi there", "Hi there friend", "Hi there"),             # one is a prefix of the other, at a word end
    ("Say yes", "Say yesterday", "Say"),                     # ... or inside a word
])
def test_trl_implicit_prompt(chosen, rejected, prompt):
    assert chosen[:implicit_prompt(chosen, rejected)] == prompt
    kind, rec = import_trl_pair({"chosen": chosen, "rejected": rejected}, "f", 1)
    assert rec["prompt"] == prompt
    assert rec["prompt"] + rec["chosen"] == chosen and rec["prompt"] + rec["rejected"] == rejected


def test_trl_conversational_pairs():
    user = {"role": "user", "content": "Name a colour."}
    explicit = {"prompt": [user], "chosen": [{"role": "assistant", "content": "Blue."}],
                "rejected": [{"role": "assistant", "content": "Seven."}]}
    kind, rec = import_trl_pair(explicit, "f", 1, style="messages")
    assert rec == {"prompt": "user: Name a colour.\nassistant: ", "chosen": "Blue.", "rejected": "Seven.",
                   "messages": [user]}
    implicit = {"chosen": [user, {"role": "assistant", "content": "Blue."}],
                "rejected": [user, {"role": "assistant", "content": "Seven."}]}
    assert import_trl_pair(implicit, "f", 1, style="messages") == (kind, rec)
    _, demo = import_trl_pair(implicit, "f", 1, to="demonstrations", style="messages")
    assert demo == {"messages": [user, {"role": "assistant", "content": "Blue."}]}


def test_plain_chat_text_matches_the_plain_template():
    from instructkit.config import TemplateConfig
    from instructkit.data.encode import render_prompt

    msgs = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    assert plain_chat_text(msgs) == render_prompt("", None, TemplateConfig(kind="plain"), msgs)


@pytest.mark.parametrize("obj, field", [
    ({"chosen": "abc", "rejected": "xyz"}, "prompt"),                     # nothing shared, no prompt
    ({"prompt": "p", "chosen": "a", "rejected": "a"}, "rejected"),
    ({"prompt": "p", "chosen": "a"}, "rejected"),
    ({"prompt": 1, "chosen": "a", "rejected": "b"}, "prompt"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "user", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "b"}]}, "chosen"),
    ({"chosen": [{"role": "x", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}, "chosen"),
])
def test_trl_pair_errors(obj, field):
    with pytest.raises(InputError) as e:
        import_trl_pair(obj, "f.jsonl", 2)
    assert (e.value.line, e.value.field) == (2, field)


def test_trl_prompt_completion():
    assert import_trl_completion({"prompt": "Q", "completion": " A"}, "f", 1) == (
        "demonstration", {"prompt": "Q", "completion": " A"})
    assert import_trl_completion({"prompt": "Q", "completion": " A", "label": False}, "f", 1) == (
        "unpaired", {"prompt": "Q", "completion": " A", "label": False})
    conv = {"prompt": [{"role": "user", "content": "Q"}], "completion": [{"role": "assistant", "content": "A"}]}
    assert import_trl_completion(conv, "f", 1, style="messages") == (
        "demonstration", {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]})
    assert import_trl_completion(conv, "f", 1) == (
        "demonstration", {"prompt": "user: Q\nassistant: ", "completion": "A"})
    with pytest.raises(InputError) as e:
        import_trl_completion({"prompt": "Q", "completion": "A", "label": "yes"}, "f", 5)
    assert (e.value.line, e.value.field) == (5, "label")


# ---------------------------------------------------------------- ratings

def test_ratings_to_ranks():
    kind, rec = import_rating({"prompt": "p", "completions": ["a", "b", "c"], "scores": [3, 7, 3]}, "f", 1)
    assert kind == "ranking"
    assert rec == {"prompt": "p", "completions": ["a", "b", "c"], "ranks": [2, 1, 2], "scores": [3, 7, 3]}
    _, rec = import_rating({"prompt": "p", "completions": [{"text": "a", "score": 0.1},
                                                           {"response": "b", "rating": 0.5}]}, "f", 1)
    assert (rec["completions"], rec["ranks"]) == (["a", "b"], [2, 1])


@pytest.mark.parametrize("obj, field", [
    ({"prompt": "p", "completions": ["a", "b"]}, "scores"),
    ({"prompt": "p", "completions": ["a", "b"], "scores": [1]}, "scores"),
    ({"prompt": "p", "completions": ["a", "b"], "scores": [1, None]}, "scores"),
    ({"prompt": "p", "completions": ["a", "b"], "scores": [1, float("inf")]}, "scores"),
    ({"prompt": "p", "completions": ["a"], "scores": [1]}, "completions"),
    ({"prompt": "p", "completions": [{"score": 1}, {"text": "b", "score": 2}]}, "completions"),
    ({"completions": ["a", "b"], "scores": [1, 2]}, "prompt"),
])
def test_rating_errors(obj, field):
    with pytest.raises(InputError) as e:
        import_rating(obj, "f", 9)
    assert (e.value.line, e.value.field) == (9, field)


# ---------------------------------------------------------------- the command

def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _cli(*args):
    p = subprocess.run([PYTHON, "-m", "instructkit", "import", *map(str, args)], capture_output=True, text=True,
                       env=subprocess_env(), timeout=120)
    return p.returncode, p.stdout, p.stderr


def test_import_hh_command_output_loads_as_rankings(tmp_path):
    src = _jsonl(tmp_path / "hh.jsonl", [SINGLE, MULTI, SHARED_START])
    out = tmp_path / "rankings.jsonl"
    code, stdout, stderr = _cli("hh", "--in", src, "--out", out)
    assert (code, stderr) == (0, "")
    assert f"3 pair records -> {out}" in stdout
    rs = load(out, "ranking")
    assert [r.prompt for r in rs] == ["\n\nHuman: What is the capital of France?\n\nAssistant:", MULTI_PROMPT,
                                      "\n\nHuman: Is water wet?\n\nAssistant:"]
    assert rs[1].completions == [" Why did the cat sit on the computer? To keep an eye on the mouse.", " No."]
    assert [r.ranks for r in rs] == [[1, 2]] * 3


def test_import_malformed_hh_names_its_line_and_writes_nothing(tmp_path):
    bad = {"chosen": "\n\nHuman: hi\n\nAssistant: yes", "rejected": "\n\nHuman: hello\n\nAssistant: no"}
    src = _jsonl(tmp_path / "hh.jsonl", [SINGLE, MULTI, bad, SINGLE])
    out = tmp_path / "new" / "rankings.jsonl"
    code, stdout, stderr = _cli("hh", "--in", src, "--out", out)
    assert code == 2
    assert stderr == (f"instructkit: error: {src}:3: field 'chosen': no '\\n\\nAssistant:' turn shared by chosen "
                      "and rejected (expected HH-RLHF transcripts: '\\n\\nHuman: ...\\n\\nAssistant: ...')\n")
    assert not (tmp_path / "new").exists()  # neither the file nor the directory made for it


def test_import_skip_invalid_reports_counts(tmp_path, capsys):
    src = _jsonl(tmp_path / "hh.jsonl", [SINGLE, dict(SINGLE, rejected=SINGLE["chosen"]), MULTI,
                                         {"chosen": "x", "rejected": "y"}, {"chosen": "x", "rejected": "z"}])
    out = tmp_path / "out.jsonl"
    code, stdout, _ = run_cli(["import", "hh", f"--in={src}", "--out", out, "--skip-invalid"], capsys)
    assert code == 0
    assert len(load(out, "pair")) == 2
    assert "skipped 3 invalid records" in stdout
    assert "     2  field 'chosen': no '\\n\\nAssistant:' turn shared" in stdout
    assert "     1  field 'rejected': identical to chosen" in stdout


def test_import_other_formats(tmp_path, capsys):
    pairs = _jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                              {"chosen": "The sky is blue", "rejected": "The sky is red"}])
    code, _, _ = run_cli(["import", "trl-pairs", "input=" + str(pairs), "out=" + str(tmp_path / "p.jsonl")], capsys)
    assert code == 0 and [r.prompt for r in load(tmp_path / "p.jsonl", "ranking")] == ["p", "The sky is"]

    comps = _jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "completion": "a", "label": True},
                                          {"prompt": "q", "completion": "b", "label": False}])
    code, _, _ = run_cli(["import", "trl-completions", "--in", comps, "--out", tmp_path / "u.jsonl"], capsys)
    assert code == 0 and [u.label for u in load(tmp_path / "u.jsonl", "unpaired")] == [True, False]

    mixed = _jsonl(tmp_path / "m.jsonl", [{"prompt": "p", "completion": "a"},
                                          {"prompt": "q", "completion": "b", "label": False}])
    code, _, err = run_cli(["import", "trl-completions", "--in", mixed, "--out", tmp_path / "x.jsonl"], capsys)
    assert code == 2 and f"{mixed}:2: field 'label': would be a unpaired record" in err
    assert not (tmp_path / "x.jsonl").exists()

    rated = _jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "completions": ["a", "b", "c"], "scores": [1, 9, 5]}])
    code, _, _ = run_cli(["import", "ratings", "--in", rated, "--out", tmp_path / "rk.jsonl"], capsys)
    assert code == 0 and load(tmp_path / "rk.jsonl", "ranking")[0].ranks == [3, 1, 2]

    code, _, err = run_cli(["import", "csv", "--in", rated, "--out", tmp_path / "y.jsonl"], capsys)
    assert code == 2 and "field 'format': expected one of ['hh', 'trl-pairs', 'trl-completions', 'ratings']" in err
