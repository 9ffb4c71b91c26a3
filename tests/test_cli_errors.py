"""Bad inputs to every command that reads a file: exit code 2, one line on stderr naming file, line and
field, no traceback, nothing left behind. A representative subset runs as real child processes
(`python -m instructkit ...`), so "no traceback" covers the whole entry point; the full matrix runs
in-process through `instructkit.cli.main`."""
from __future__ import annotations

import json
import subprocess

import pytest

from conftest import PYTHON, TINY_MODEL, run_cli, subprocess_env

HH_OK = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}

# command -> (a good record, a record missing a field, the field, a mistyped record, the field, what it says)
KINDS = {
    "pretrain": ({"text": "some text"}, {"txt": "x"}, "text", {"text": 5}, "text", "expected a string, got int"),
    "sft": ({"prompt": "p", "completion": "c"}, {"prompt": "p"}, "completion", {"prompt": "p", "completion": 3},
            "completion", "expected a string, got int"),
    "sample": ({"prompt": "p"}, {"question": "x"}, "prompt", {"prompt": ["p"]}, "prompt",
               "expected a string, got list"),
    "import": (HH_OK, {"chosen": HH_OK["chosen"]}, "rejected", {"chosen": 1, "rejected": "x"}, "chosen",
               "expected a string, got int"),
}


def _bad_files(root, cmd):
    """case -> (path, line, field, words): the file holding the case for `cmd` and what the error says."""
    good, missing, mfield, mistyped, tfield, twords = KINDS[cmd]
    good_line = json.dumps(good).encode() + b"\n"
    cases = {
        "malformed": (good_line + b'{"prompt": "a", \n', 2, None, "malformed JSON: Expecting property name"),
        "missing": (good_line + good_line + json.dumps(missing).encode() + b"\n", 3, mfield,
                    "missing required field"),
        "mistyped": (json.dumps(mistyped).encode() + b"\n", 1, tfield, twords),
        "empty": (b"", None, None, "file is empty: no records"),
        "non_utf8": (good_line + b'{"text": "caf\xe9"}\n', 2, None, "not valid UTF-8"),
        "huge_line": (b'{"text": "' + b"a" * (10 * 1024 * 1024) + b'"}\n', 1, None, "line longer than 8 MiB"),
        "directory": ("dir", None, None, "found a directory"),
        "nonexistent": (None, None, None, "does not exist"),
    }
    out = {}
    for case, (content, line, field, words) in cases.items():
        path = root / f"{cmd}_{case}.jsonl"
        if content == "dir":
            path.mkdir()
        elif content is not None:
            path.write_bytes(content)
        out[case] = (path, line, field, words)
    return out


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    return {cmd: _bad_files(root, cmd) for cmd in KINDS}


def _argv(cmd, path, out, model):
    if cmd == "pretrain":
        return ["pretrain", f"data.train={path}", f"out={out}", *TINY_MODEL, "seq_len=32", "max_steps=2"]
    if cmd == "sft":
        return ["sft", f"model={model}", f"data.train={path}", f"out={out}", "epochs=1"]
    if cmd == "sample":
        return ["sample", model, "--prompts", path, "--out", out / "samples.jsonl"]
    return ["import", "hh", "--in", path, "--out", out / "pairs.jsonl"]


def _check(code, err, path, line, field, words, out_root):
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    where = f"{path}:{line}" if line is not None else f"{path}"
    prefix = f"instructkit: error: {where}: " + (f"field '{field}': " if field else "")
    assert lines[0].startswith(prefix), (lines[0], prefix)
    assert words in lines[0]
    assert not out_root.exists(), "an output directory was left behind"


@pytest.mark.parametrize("case", ["malformed", "missing", "mistyped", "empty", "non_utf8", "huge_line",
                                  "directory", "nonexistent"])
@pytest.mark.parametrize("cmd", list(KINDS))
def test_bad_input_in_process(cmd, case, bad_files, tiny_base_model, tmp_path, capsys):
    path, line, field, words = bad_files[cmd][case]
    out_root = tmp_path / "runs"  # does not exist; the command would create runs/x
    code, _, err = run_cli(_argv(cmd, path, out_root / "x", tiny_base_model), capsys)
    _check(code, err, path, line, field, words, out_root)


def test_bad_input_subprocesses(bad_files, tiny_base_model, tmp_path):
    """The same through `python -m instructkit` in child processes, started together to share the wait."""
    # one that imports torch (a stage; the rest of the matrix runs in-process) and two that must not need it
    chosen = [("sft", "malformed"), ("import", "huge_line"), ("import", "missing")]
    procs = []
    for i, (cmd, case) in enumerate(chosen):
        path, line, field, words = bad_files[cmd][case]
        out_root = tmp_path / f"runs{i}"
        argv = [str(a) for a in _argv(cmd, path, out_root / "x", tiny_base_model)]
        p = subprocess.Popen([PYTHON, "-m", "instructkit", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=subprocess_env())
        procs.append((p, path, line, field, words, out_root))
    for p, path, line, field, words, out_root in procs:
        stdout, stderr = p.communicate(timeout=300)
        _check(p.returncode, stderr, path, line, field, words, out_root)
        assert stdout == ""


def test_other_bad_files_of_sft(bad_files, tiny_base_model, tmp_path, capsys):
    """data.val and select.prompts are read and checked before anything is written, too."""
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    out_root = tmp_path / "runs"
    path, line, field, words = bad_files["sft"]["missing"]
    code, _, err = run_cli(["sft", f"model={tiny_base_model}", f"data.train={good}", f"data.val={path}",
                            f"out={out_root / 'x'}"], capsys)
    _check(code, err, path, line, field, words, out_root)
    path, line, field, words = bad_files["sample"]["mistyped"]
    code, _, err = run_cli(["sft", f"model={tiny_base_model}", f"data.train={good}", f"select.prompts={path}",
                            f"out={out_root / 'x'}"], capsys)
    _check(code, err, path, line, field, words, out_root)
    path, line, field, words = bad_files["pretrain"]["non_utf8"]
    code, _, err = run_cli(["pretrain", f"data.train={bad_files['pretrain']['malformed'][0]}", f"data.val={path}",
                            f"out={out_root / 'x'}"], capsys)
    _check(code, err, bad_files["pretrain"]["malformed"][0], 2, None, "malformed JSON", out_root)


def test_bad_model_directories(tmp_path, capsys):
    demos = tmp_path / "d.jsonl"
    demos.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "file").write_text("x")
    out_root = tmp_path / "runs"
    for model, words in [(tmp_path / "missing", "model directory does not exist"),
                         (tmp_path / "file", "expected a model directory"),
                         (tmp_path / "not_a_model", "not a Hugging Face checkpoint (no config.json)")]:
        code, _, err = run_cli(["sft", f"model={model}", f"data.train={demos}", f"out={out_root / 'x'}"], capsys)
        _check(code, err, model, None, None, words, out_root)


def test_error_found_after_the_run_started_leaves_nothing(tmp_path, capsys):
    """pretrain creates its directory (and saves a tokenizer) before it learns the text is too short."""
    corpus = tmp_path / "short.jsonl"
    corpus.write_text(json.dumps({"text": "hi"}) + "\n")
    out_root = tmp_path / "runs"
    code, _, err = run_cli(["pretrain", f"data.train={corpus}", f"out={out_root / 'nested' / 'base'}", *TINY_MODEL,
                            "seq_len=32"], capsys)
    _check(code, err, corpus, None, None, "fewer than 32 tokens of training text", out_root)


def test_sample_prompt_longer_than_the_model(tiny_base_model, tmp_path, capsys):
    """GPT-2 cannot index positions past its table: say which prompt, instead of an IndexError."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "short"}) + "\n" + json.dumps({"prompt": "the cat " * 100}) + "\n")
    code, _, err = run_cli(["sample", tiny_base_model, "--prompts", prompts, "--out", tmp_path / "o" / "s.jsonl"],
                           capsys)
    _check(code, err, prompts, 2, "prompt", "exceeds the model's 64 positions", tmp_path / "o")
