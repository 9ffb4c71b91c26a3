"""instructkit.data.jsonl: the validating streaming reader and the atomic writers."""
from __future__ import annotations

import json
import os

import pytest

from instructkit.data.jsonl import (MAX_LINE_BYTES, append_jsonl, atomic_open, iter_json_lines, read_records,
                                    write_json, write_jsonl)
from instructkit.errors import InputError


def _error(path) -> InputError:
    with pytest.raises(InputError) as e:
        list(iter_json_lines(path))
    return e.value


def test_line_numbers_count_blank_lines(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"a": 1}\n\n   \n{"a": 2}\r\n{"a": 3}')  # CRLF and no final newline are fine
    assert list(iter_json_lines(p)) == [(1, {"a": 1}), (4, {"a": 2}), (5, {"a": 3})]


def test_byte_order_mark_is_accepted(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"a": 1}\n{"a": 2}\n')
    assert list(iter_json_lines(p)) == [(1, {"a": 1}), (2, {"a": 2})]


def test_malformed_json_names_line_and_column(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"a": 1}\n{"a": 1,}\n', encoding="utf-8")
    e = _error(p)
    # '{"a": 1,}': the closing brace at column 9 is where a property name was expected
    assert (e.path, e.line) == (str(p), 2)
    assert e.message == "malformed JSON: Expecting property name enclosed in double quotes (column 9)"


def test_truncated_line(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"prompt": "a", \n', encoding="utf-8")  # 16 characters: the name is expected at column 17
    assert _error(p).message == "malformed JSON: Expecting property name enclosed in double quotes (column 17)"


def test_non_object_line(tmp_path):
    p = tmp_path / "l.jsonl"
    p.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    e = _error(p)
    assert (e.line, e.message) == (2, "expected a JSON object, got list")


def test_non_utf8(tmp_path):
    p = tmp_path / "u.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    e = _error(p)
    assert (e.line, e.message) == (2, "not valid UTF-8 (byte 7 of the line)")


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file(tmp_path, content):
    p = tmp_path / "e.jsonl"
    p.write_bytes(content)
    e = _error(p)
    assert (e.path, e.line, e.message) == (str(p), None, "file is empty: no records")


def test_directory_and_missing_file(tmp_path):
    e = _error(tmp_path)
    assert (e.path, e.message) == (str(tmp_path), "expected a JSONL file, found a directory")
    e = _error(tmp_path / "nope.jsonl")
    assert e.message == "JSONL file does not exist"


def test_huge_line_is_refused_without_reading_it_whole(tmp_path):
    p = tmp_path / "big.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": "' + b"x" * (10 * 1024 * 1024) + b'"}\n')
    e = _error(p)
    assert (e.line, e.message) == (2, "line longer than 8 MiB")
    ok = tmp_path / "ok.jsonl"  # just under the limit is read
    ok.write_bytes(b'{"a": "' + b"x" * (MAX_LINE_BYTES - 16) + b'"}\n')
    assert len(list(iter_json_lines(ok))[0][1]["a"]) == MAX_LINE_BYTES - 16


def test_read_records_is_all_or_nothing(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"n": 1}\n{"n": 2}\n{"m": 3}\n', encoding="utf-8")

    def parse(obj, path, line):
        if "n" not in obj:
            raise InputError("missing required field", path=path, line=line, field="n")
        return obj["n"]

    with pytest.raises(InputError) as e:
        read_records(p, parse)
    assert str(e.value) == f"{p}:3: field 'n': missing required field"


def test_write_jsonl_is_atomic(tmp_path):
    p = tmp_path / "out.jsonl"
    assert write_jsonl(p, [{"a": "é"}, {"b": [1, 2]}]) == 2
    assert p.read_text(encoding="utf-8") == '{"a": "é"}\n{"b": [1, 2]}\n'

    def boom():
        yield {"c": 1}
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(p, boom())
    assert p.read_text(encoding="utf-8") == '{"a": "é"}\n{"b": [1, 2]}\n'  # the old file is untouched
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl"]  # and no temporary file is left


def test_atomic_open_creates_nothing_on_failure(tmp_path):
    p = tmp_path / "new.jsonl"
    with pytest.raises(ValueError):
        with atomic_open(p) as f:
            f.write("partial")
            raise ValueError
    assert os.listdir(tmp_path) == []


def test_write_json_and_append(tmp_path):
    write_json(tmp_path / "x.json", {"b": 1, "a": [1.5]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"b": 1, "a": [1.5]}
    log = tmp_path / "m.jsonl"
    append_jsonl(log, {"step": 1, "loss": 2.5})
    append_jsonl(log, {"step": 2, "loss": 2.0})
    assert [o for _, o in iter_json_lines(log)] == [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.0}]
