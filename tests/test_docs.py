"""docs/config.md is generated and must be current; every example in docs/formats.md must be valid."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import run_cli
from instructkit import docs_gen
from instructkit.cli import COMMANDS
from instructkit.config import describe
from instructkit.data.importers import IMPORTERS
from instructkit.data.records import PARSERS

DOCS = Path(__file__).resolve().parents[1] / "docs"
# a marker comment, then a fenced block: <!-- record: ranking --> ```json ... ```
BLOCK = re.compile(r"<!-- (\w+): ([^>]*?) -->\n```(?:json)?\n(.*?)\n```", re.S)


def test_config_md_is_current():
    committed = (DOCS / "config.md").read_text(encoding="utf-8")
    if committed != docs_gen.render():
        pytest.fail(f"docs/config.md is stale; regenerate it with: {docs_gen.REGENERATE}")


def test_config_md_is_deterministic_and_complete():
    text = docs_gen.render()
    assert text == docs_gen.render()
    assert "0x" not in text  # no object reprs with addresses
    for name, (cls, *_rest) in COMMANDS.items():
        assert f"\n## instructkit {name}\n" in text
        for field_name, _, _, doc in describe(cls):
            assert f"| `{field_name}` |" in text and doc.replace("|", "\\|") in text, (name, field_name)


def test_docs_gen_check_flag(tmp_path, capsys):
    stale = tmp_path / "config.md"
    stale.write_text("old\n")
    assert docs_gen.main(["--check", "--out", str(stale)]) == 1
    assert docs_gen.REGENERATE in capsys.readouterr().err
    assert docs_gen.main(["--out", str(stale)]) == 0
    assert docs_gen.main(["--check", "--out", str(stale)]) == 0
    assert stale.read_text() == docs_gen.render()


def _blocks():
    return BLOCK.findall((DOCS / "formats.md").read_text(encoding="utf-8"))


def test_every_record_example_parses():
    examples = [(arg, body) for tag, arg, body in _blocks() if tag == "record"]
    assert {kind for kind, _ in examples} == set(PARSERS)  # every record type has an example
    for kind, body in examples:
        obj = json.loads(body)
        record = PARSERS[kind](obj, "formats.md", 1)
        reader = "ranking" if kind in ("pair", "rating") else kind  # these are written back as rankings
        assert PARSERS[reader](record.to_json(), "formats.md", 1) == record, kind


def test_every_import_example_gives_its_result():
    blocks = _blocks()
    pairs = [(blocks[i], blocks[i + 1]) for i in range(len(blocks) - 1) if blocks[i][0] == "import"]
    assert {spec.split()[0] for (_, spec, _), _ in pairs} == set(IMPORTERS)
    for (_, spec, body), (tag, kind, result) in pairs:
        fmt, *opts = spec.split()
        assert tag == "result"
        got_kind, record = IMPORTERS[fmt](json.loads(body), "formats.md", 1, **dict(o.split("=") for o in opts))
        assert (got_kind, record) == (kind, json.loads(result)), fmt


def test_error_example_is_what_the_cli_prints(tmp_path, monkeypatch, capsys):
    (example,) = [(arg, body) for tag, arg, body in _blocks() if tag == "error"]
    command, filename = example[0].split()
    monkeypatch.chdir(tmp_path)
    Path(filename).write_text('{"prompt": "A", "completion": "a"}\n\n{"prompt": "Hi"}\n')
    code, _, err = run_cli([command, "model=base", f"data.train={filename}", "out=out"], capsys)
    assert code == 2 and err == example[1] + "\n"


def test_formats_md_documents_the_output_directory():
    text = (DOCS / "formats.md").read_text(encoding="utf-8")
    for name in ("model.safetensors", "tokenizer.json", "instructkit.json", "metrics.jsonl", "checkpoint/",
                 "run.json", "`complete`", "`inputs`", "`config`"):
        assert name in text, name
