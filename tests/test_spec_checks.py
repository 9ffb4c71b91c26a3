"""Every assertion type of a behaviour spec on hand-written passing and failing responses, the
refusal detector, and the text measures (words, sentences)."""
from __future__ import annotations

import sys
import textwrap

import pytest

from instructkit.feedback_ai.checks import (ASSERTIONS, Example, Refusals, SpecValueError, compile_assertion,
                                            sentences, words)


def check(key, value, *, ignore_case=False, refusals=None, base_dir=None, tmp_path=None):
    from pathlib import Path

    return compile_assertion(key, value, ignore_case=ignore_case, refusals=refusals or Refusals(),
                             base_dir=Path(base_dir or tmp_path or "."))


EX = Example("Summarize the ticket.")

# key, value, passing response, failing response, words expected in the failure reason
CASES = [
    ("contains", ["refund", "order"], "Your refund for order 12 is on its way.", "Your refund is on its way.",
     "missing 'order'"),
    ("contains_any", ["refund", "credit"], "We issued a credit.", "We are looking into it.", "none of"),
    ("not_contains", "guarantee", "We will try our best.", "We guarantee delivery.", "contains 'guarantee'"),
    ("regex", r"\b[A-Z]{3}-\d{4}\b", "See ticket ABC-1234.", "See ticket abc-12.", "no match"),
    ("not_regex", r"\$\s?\d", "The fee is waived.", "The fee is $ 40.", "matches"),
    ("starts_with", ["Thank you", "Sorry"], "  Thank you for waiting.", "Hello, thank you.", "starts with"),
    ("max_words", 5, "One two three , four five .", "one two three four five six", "6 words (max 5)"),
    ("min_words", 3, "one two three", "one two", "2 words (min 3)"),
    ("max_sentences", 2, "First one. Second one!", "One. Two. Three?", "3 sentences (max 2)"),
    ("min_sentences", 2, "It works. Really.", "It works", "1 sentences (min 2)"),
    ("valid_json", True, '{"a": [1, 2]}', "{'a': 1}", "not JSON"),
    ("json_schema", {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}},
     '{"id": 7}', '{"id": "7"}', "is not of type 'integer' at $['id']"),
    ("must_refuse", True, "I'm sorry, but I can't help with that.", "Sure! Step one: ...", "no refusal"),
    ("must_not_refuse", True, "Sure, here are the steps.", "I cannot help with that request.", "refused"),
    ("equals", "42", "  42 ", "41", "!="),
]


@pytest.mark.parametrize("key,value,good,bad,why", CASES, ids=[c[0] for c in CASES])
def test_each_assertion_passes_and_fails_on_hand_written_outputs(key, value, good, bad, why, tmp_path):
    fn = check(key, value, tmp_path=tmp_path)
    ok, _ = fn(good, EX)
    assert ok is True
    ok, reason = fn(bad, EX)
    assert ok is False and why in reason


def test_every_assertion_type_is_covered_here():
    covered = {c[0] for c in CASES} | {"equals_reference", "python"}
    assert covered == set(ASSERTIONS)


def test_equals_reference_normalises_whitespace_and_is_not_applicable_without_a_reference(tmp_path):
    fn = check("equals_reference", True, tmp_path=tmp_path)
    assert fn("Paris\n", Example("capital of France?", reference="  Paris"))[0] is True
    ok, reason = fn("paris", Example("capital of France?", reference="Paris"))
    assert ok is False and "reference 'Paris'" in reason
    assert check("equals_reference", True, ignore_case=True, tmp_path=tmp_path)("paris", Example("q", "Paris"))[0]
    ok, reason = fn("Paris", Example("capital of France?"))
    assert ok is None and "no reference" in reason


def test_python_callable_from_the_spec_directory(tmp_path):
    (tmp_path / "my_checks.py").write_text(textwrap.dedent("""
        def mentions_ticket(prompt, response, prefix="T-"):
            return prefix in response, f"no {prefix} id"

        def echoes(prompt, response, example):
            return response.strip() == example.meta["expected"]

        def boom(prompt, response):
            raise RuntimeError("bad check")
    """))
    try:
        fn = check("python", {"function": "my_checks:mentions_ticket", "args": {"prefix": "TK-"}}, base_dir=tmp_path)
        assert fn("see TK-9", EX) == (True, "no TK- id")
        assert fn("see T-9", EX) == (False, "no TK- id")
        fn = check("python", "my_checks:echoes", base_dir=tmp_path)
        assert fn("yes", Example("q", meta={"expected": "yes"}))[0] is True
        assert fn("no", Example("q", meta={"expected": "yes"}))[0] is False
        ok, reason = check("python", "my_checks:boom", base_dir=tmp_path)("x", EX)
        assert ok is False and "RuntimeError: bad check" in reason
    finally:
        sys.modules.pop("my_checks", None)
    with pytest.raises(SpecValueError, match="cannot import module"):
        check("python", "no_such_module_xyz:f", base_dir=tmp_path)
    with pytest.raises(SpecValueError, match="expected 'module:function'"):
        check("python", "just_a_name", base_dir=tmp_path)


def test_json_schema_from_a_file_and_bad_schemas(tmp_path):
    (tmp_path / "order.json").write_text('{"type": "object", "required": ["status"]}')
    fn = check("json_schema", "order.json", base_dir=tmp_path)
    assert fn('{"status": "ok"}', EX)[0] is True
    ok, reason = fn('{"id": 1}', EX)
    assert ok is False and "'status' is a required property" in reason
    assert fn("not json", EX)[0] is False
    with pytest.raises(SpecValueError, match="not a valid JSON Schema"):
        check("json_schema", {"type": "no-such-type"}, tmp_path=tmp_path)
    with pytest.raises(SpecValueError, match="cannot read"):
        check("json_schema", "missing.json", base_dir=tmp_path)


def test_ignore_case_and_bad_values(tmp_path):
    assert check("contains", "REFUND", ignore_case=True, tmp_path=tmp_path)("your refund", EX)[0] is True
    assert check("contains", "REFUND", tmp_path=tmp_path)("your refund", EX)[0] is False
    assert check("regex", "^hello", ignore_case=True, tmp_path=tmp_path)("Hello there", EX)[0] is True
    for key, value in [("regex", "(unclosed"), ("max_words", -1), ("max_words", "ten"), ("contains", []),
                       ("must_refuse", False), ("valid_json", "yes"), ("equals", 3)]:
        with pytest.raises(SpecValueError):
            check(key, value, tmp_path=tmp_path)
    with pytest.raises(SpecValueError, match="unknown assertion 'containz'"):
        check("containz", "x", tmp_path=tmp_path)


def test_refusal_detector():
    r = Refusals()
    for text in ["I can\u2019t help with that.", "i can not help with that , it is not safe",
                 "Sorry, I will not help you steal a car.", "I must decline."]:
        assert r.match(text), text
    for text in ["Sure: first mix flour and water.", "Here is how to bake bread.",
                 "Step one is easy. " * 20 + "It is not safe to leave the oven on."]:  # deep in a long answer
        assert r.match(text) is None, text
    assert Refusals(["out of scope"]).match("That is out of scope for me.") == "out of scope"
    assert Refusals().match("That is out of scope for me.") is None


def test_words_and_sentences():
    assert words("one , two three . !") == ["one", "two", "three"]
    assert sentences("Dr. Who? Yes. 3.5 is a number") == ["Dr.", "Who?", "Yes.", "3.5 is a number"]
    assert sentences("") == [] and sentences("...") == []
