"""instructkit.data.records: every record kind of the contract parses, validates with file/line/field,
and round-trips through write_jsonl + load."""
from __future__ import annotations

import json

import pytest

from instructkit.data import load, read_text_file, write_jsonl
from instructkit.data.records import (Demonstration, Prompt, Ranking, Text, Unpaired, parse_demonstration,
                                      parse_ranking, scores_to_ranks)
from instructkit.errors import InputError


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _roundtrip(tmp_path, records, kind):
    path = tmp_path / f"{kind}.jsonl"
    assert write_jsonl(path, records) == len(records)
    return load(path, kind)


# ---------------------------------------------------------------- demonstrations

def test_demonstration_prompt_completion(tmp_path):
    path = _write(tmp_path / "d.jsonl", [{"prompt": "Q: 1+1?\n", "completion": "2", "task": "add"},
                                         {"prompt": "", "completion": "free text"}])
    d1, d2 = load(path, "demonstration")
    assert (d1.prompt, d1.completion, d1.messages, d1.meta) == ("Q: 1+1?\n", "2", None, {"task": "add"})
    assert (d2.prompt, d2.completion) == ("", "free text")  # an empty prompt is allowed, an empty answer not
    assert d1.to_json() == {"prompt": "Q: 1+1?\n", "completion": "2", "task": "add"}
    assert _roundtrip(tmp_path, [d1, d2], "demonstration") == [d1, d2]


def test_demonstration_messages_form(tmp_path):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye."}]
    d = parse_demonstration({"messages": msgs, "id": 7}, "f.jsonl", 1)
    assert d.messages == msgs and d.completion == "Goodbye." and d.prompt == "" and d.meta == {"id": 7}
    assert d.to_json() == {"messages": msgs, "id": 7}
    assert _roundtrip(tmp_path, [d], "demonstration") == [d]


@pytest.mark.parametrize("obj, field, words", [
    ({"prompt": "p"}, "completion", "missing required field"),
    ({"completion": "c"}, "prompt", "missing required field"),
    ({"prompt": "p", "completion": 3}, "completion", "expected a string, got int"),
    ({"prompt": "p", "completion": "  "}, "completion", "must not be empty"),
    ({"text": "x"}, "prompt", "expected {\"prompt\", \"completion\"} or {\"messages\"}"),
    ({"messages": []}, "messages", "non-empty list"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "messages", "last message must be the assistant's"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, "messages", "item 0"),
    ({"messages": [{"role": "assistant", "content": 5}]}, "messages", "item 0"),
])
def test_demonstration_errors_name_file_line_field(obj, field, words):
    with pytest.raises(InputError) as e:
        parse_demonstration(obj, "demos.jsonl", 12)
    assert (e.value.path, e.value.line, e.value.field) == ("demos.jsonl", 12, field)
    assert words in e.value.message
    assert str(e.value).startswith(f"demos.jsonl:12: field '{field}': ")


# ---------------------------------------------------------------- rankings, pairs, ratings

def test_ranking_with_ties_likert_flags(tmp_path):
    obj = {"prompt": "Write a haiku", "completions": ["a", "b", "c", "d"], "ranks": [2, 1, 2, 4],
           "labeler": "L3", "likert": [5, 7, 5, 1], "flags": [{}, {}, {"hallucination": True}, {"toxic": True}],
           "batch": 9}
    r = parse_ranking(obj, "r.jsonl", 1)
    assert (r.k, r.ranks, r.labeler, r.likert, r.not_rankable) == (4, [2, 1, 2, 4], "L3", [5, 7, 5, 1], False)
    assert r.flags[2] == {"hallucination": True} and r.meta == {"batch": 9}
    # winner-loser index pairs; the tie between completions 0 and 2 gives no pair
    assert sorted(r.pairs()) == [(0, 3), (1, 0), (1, 2), (1, 3), (2, 3)]
    assert r.to_json() == obj
    assert _roundtrip(tmp_path, [r], "ranking") == [r]


def test_not_rankable_needs_no_ranks(tmp_path):
    r = parse_ranking({"prompt": "p", "completions": ["x", "y", "z"], "not_rankable": True}, "r.jsonl", 4)
    assert r.not_rankable and r.ranks == [1, 1, 1] and r.pairs() == []
    assert r.to_json()["not_rankable"] is True
    assert _roundtrip(tmp_path, [r], "ranking") == [r]


def test_pair_is_a_ranking_with_k_2(tmp_path):
    path = _write(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "good", "rejected": "bad", "src": "hh"}])
    (r,) = load(path, "pair")
    assert (r.completions, r.ranks, r.pairs(), r.meta) == (["good", "bad"], [1, 2], [(0, 1)], {"src": "hh"})
    assert load(path, "ranking") == [r]  # the ranking reader accepts pairs too
    assert _roundtrip(tmp_path, [r], "ranking") == [r]


def test_rating_becomes_ranks(tmp_path):
    path = _write(tmp_path / "s.jsonl", [{"prompt": "p", "completions": ["a", "b", "c"], "scores": [0.2, 0.9, 0.2]}])
    (r,) = load(path, "rating")
    assert r.ranks == [2, 1, 2] and r.pairs() == [(1, 0), (1, 2)]
    assert load(path, "ranking") == [r]
    assert _roundtrip(tmp_path, [r], "ranking") == [r]


def test_ranking_file_mixes_rankings_pairs_ratings(tmp_path):
    path = _write(tmp_path / "mix.jsonl", [
        {"prompt": "a", "completions": ["x", "y", "z"], "ranks": [3, 2, 1]},
        "",  # blank lines are skipped but still counted
        {"prompt": "b", "chosen": "x", "rejected": "y"},
        {"prompt": "c", "completions": ["x", "y"], "scores": [1, 5]},
    ])
    rs = load(path, "ranking")
    assert [r.ranks for r in rs] == [[3, 2, 1], [1, 2], [2, 1]]


@pytest.mark.parametrize("obj, field", [
    ({"prompt": "p", "completions": ["a", "b"]}, "ranks"),
    ({"prompt": "p", "completions": ["a", "b"], "ranks": [1]}, "ranks"),
    ({"prompt": "p", "completions": ["a", "b"], "ranks": [0, 1]}, "ranks"),
    ({"prompt": "p", "completions": ["a", "b"], "ranks": [1, True]}, "ranks"),
    ({"prompt": "p", "completions": ["a"], "ranks": [1]}, "completions"),
    ({"prompt": "p", "completions": ["a", 2], "ranks": [1, 2]}, "completions"),
    ({"completions": ["a", "b"], "ranks": [1, 2]}, "prompt"),
    ({"prompt": "p", "completions": ["a", "b"], "ranks": [1, 2], "likert": [8, 1]}, "likert"),
    ({"prompt": "p", "completions": ["a", "b"], "ranks": [1, 2], "likert": [True, 1]}, "likert"),
    ({"prompt": "p", "completions": ["a", "b"], "ranks": [1, 2], "flags": [{}]}, "flags"),
    ({"prompt": "p", "completions": ["a", "b"], "ranks": [1, 2], "labeler": 3}, "labeler"),
    ({"prompt": "p", "completions": ["a", "b"], "not_rankable": "yes"}, "not_rankable"),
    ({"prompt": "p", "chosen": "a"}, "rejected"),
    ({"chosen": "a", "rejected": "b"}, "prompt"),
    ({"prompt": "p", "completions": ["a", "b"], "scores": [1]}, "scores"),
    ({"prompt": "p", "completions": ["a", "b"], "scores": [1, "2"]}, "scores"),
    ({"prompt": "p", "completions": ["a", "b"], "scores": [1, float("nan")]}, "scores"),
])
def test_ranking_errors(obj, field, tmp_path):
    path = _write(tmp_path / "bad.jsonl", [{"prompt": "ok", "chosen": "a", "rejected": "b"}, obj])
    with pytest.raises(InputError) as e:
        load(path, "ranking")
    assert (e.value.path, e.value.line, e.value.field) == (str(path), 2, field)


def test_scores_to_ranks():
    assert scores_to_ranks([3, 1, 2]) == [1, 3, 2]
    assert scores_to_ranks([0.2, 0.9, 0.2]) == [2, 1, 2]
    assert scores_to_ranks([5, 5, 1]) == [1, 1, 2]
    assert scores_to_ranks([1, 2, 2, 3]) == [3, 2, 2, 1]  # dense: no gap after a tie
    assert scores_to_ranks([-1.5, 0]) == [2, 1]
    assert scores_to_ranks([7, 7]) == [1, 1]


# ---------------------------------------------------------------- unpaired, prompt, text

def test_unpaired_prompt_text_roundtrip(tmp_path):
    u = [Unpaired("p", "good answer", True), Unpaired("p", "bad answer", False, {"labeler": "L1"})]
    assert _roundtrip(tmp_path, u, "unpaired") == u
    assert u[1].to_json() == {"prompt": "p", "completion": "bad answer", "label": False, "labeler": "L1"}
    p = [Prompt("Explain the moon.", {"task": "qa"}), Prompt("List two stars.")]
    assert _roundtrip(tmp_path, p, "prompt") == p
    t = [Text("first document"), Text("second\n\ndocument")]
    assert _roundtrip(tmp_path, t, "text") == t


@pytest.mark.parametrize("kind, obj, field", [
    ("unpaired", {"prompt": "p", "completion": "c", "label": 1}, "label"),
    ("unpaired", {"prompt": "p", "completion": "c"}, "label"),
    ("prompt", {"prompt": ""}, "prompt"),
    ("prompt", {"question": "x"}, "prompt"),
    ("text", {"text": 5}, "text"),
])
def test_other_kinds_errors(kind, obj, field, tmp_path):
    path = _write(tmp_path / "bad.jsonl", [obj])
    with pytest.raises(InputError) as e:
        load(path, kind)
    assert (e.value.line, e.value.field) == (1, field)


def test_plain_text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("first doc\nstill first\n\n\n  second doc  \n\n", encoding="utf-8")
    assert read_text_file(path) == [Text("first doc\nstill first"), Text("second doc")]
    assert load(path, "text") == [Text("first doc\nstill first"), Text("second doc")]
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(InputError, match="empty"):
        load(tmp_path / "empty.txt", "text")
    (tmp_path / "bad.txt").write_bytes(b"ok\nok\n\xff\n")
    with pytest.raises(InputError) as e:
        load(tmp_path / "bad.txt", "text")
    assert e.value.line == 3 and "UTF-8" in e.value.message


def test_records_are_typed():
    assert isinstance(parse_ranking({"prompt": "p", "chosen": "a", "rejected": "b"}, "f", 1), Ranking)
    assert isinstance(parse_demonstration({"prompt": "p", "completion": "c"}, "f", 1), Demonstration)
