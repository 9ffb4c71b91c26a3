"""instructkit.config and the CLI's argument handling: YAML <- dotted overrides <- --flags, errors that
name the field (and the file), --help listing every field, and the resolved config saved with a run."""
from __future__ import annotations

import json

import pytest

from conftest import pretrain_argv, run_cli
from instructkit import config as C
from instructkit.cli import COMMANDS, split_args
from instructkit.errors import InputError


def _load(cls, argv, yaml_path=None):
    config_path, overrides, _ = split_args(argv, [])
    return C.load_config(cls, yaml_path or config_path, overrides)


def test_defaults_are_the_papers():
    cfg = C.SFTConfig()
    assert (cfg.epochs, cfg.dropout, cfg.optim.beta2, cfg.optim.min_lr_ratio, cfg.optim.warmup_steps) == (
        16, 0.2, 0.95, 0.1, 0)
    assert C.PretrainConfig().optim.lr == 3e-3  # a stage's own default for a shared group wins
    assert C.SFTConfig().optim.lr == 1e-4


def test_yaml_then_overrides_then_flags(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("model: runs/base\nepochs: 2\noptim:\n  lr: 0.5\n  beta1: 0.7\ndata:\n  train: a.jsonl\n")
    cfg = _load(C.SFTConfig, ["--config", str(y), "epochs=5", "optim.beta1=0.8", "--batch-size", "4",
                              "--data.train=my-file.jsonl", "--overwrite", "--template.kind", "chat"])
    assert cfg.model == "runs/base"            # from YAML
    assert cfg.optim.lr == 0.5                 # from YAML, nested
    assert cfg.epochs == 5                     # override beats YAML
    assert cfg.optim.beta1 == 0.8              # dotted override beats YAML, sibling kept
    assert cfg.optim.beta2 == 0.95             # untouched default
    assert cfg.batch_size == 4                 # --batch-size VALUE, '-' read as '_'
    assert cfg.data.train == "my-file.jsonl"   # --key=value keeps the hyphen in the value
    assert cfg.overwrite is True               # bare flag
    assert cfg.template.kind == "chat"


def test_values_are_read_as_yaml_but_strings_stay_verbatim():
    cfg = _load(C.SFTConfig, ["optim.lr=1e-4", "epochs=3", "overwrite=yes", "out=2024-01-01", "model=0755",
                              "data.train=true"])
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.epochs == 3 and cfg.overwrite is True
    # string fields take the text as typed: not a date, not octal 493, not a boolean
    assert (cfg.out, cfg.model, cfg.data.train) == ("2024-01-01", "0755", "true")


def test_no_file_at_all():
    cfg = _load(C.SFTConfig, ["model=runs/x/base", "data.train=demos.jsonl", "out=runs/x/sft"])
    assert (cfg.model, cfg.data.train, cfg.out) == ("runs/x/base", "demos.jsonl", "runs/x/sft")


@pytest.mark.parametrize("argv, field, words", [
    (["optim.lrr=1"], "optim.lrr", "unknown field (known: beta1, beta2, eps, grad_clip, lr, min_lr_ratio, "
                                    "schedule, warmup_steps, weight_decay)"),
    (["nope=1"], "nope", "unknown field"),
    (["epochs=abc"], "epochs", "expected an integer, got 'abc'"),
    (["epochs=1.5"], "epochs", "expected an integer, got 1.5"),
    (["optim.lr=fast"], "optim.lr", "expected a number, got 'fast'"),
    (["overwrite=maybe"], "overwrite", "expected true or false, got 'maybe'"),
    (["template.kind=xml"], "template.kind", "expected one of ['plain', 'chat'], got 'xml'"),
    (["optim=3"], "optim", "expected a mapping of OptimConfig fields"),
])
def test_override_errors_name_the_field(argv, field, words):
    with pytest.raises(InputError) as e:
        _load(C.SFTConfig, argv)
    assert (e.value.field, e.value.path) == (field, "command line")
    assert e.value.message.startswith(words)


def test_yaml_errors_name_the_file(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("optim:\n  lrr: 1\n")
    with pytest.raises(InputError) as e:
        _load(C.SFTConfig, ["epochs=2"], y)
    assert (e.value.path, e.value.field) == (str(y), "optim.lrr")  # the file is blamed, not the command line
    y.write_text("epochs: 2\nseed: [1]\n")
    with pytest.raises(InputError) as e:
        _load(C.SFTConfig, [], y)
    assert (e.value.path, e.value.field, e.value.message) == (str(y), "seed", "expected an integer, got [1]")
    y.write_text("epochs: 2\n")
    with pytest.raises(InputError) as e:  # a bad override next to a good file blames the command line
        _load(C.SFTConfig, ["epochs=x"], y)
    assert (e.value.path, e.value.field) == ("command line", "epochs")


def test_bad_yaml_files(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("epochs: 2\noptim: {lr: 1\n")
    with pytest.raises(InputError) as e:
        C.load_config(C.SFTConfig, y)
    assert e.value.path == str(y) and e.value.line == 3 and e.value.message.startswith("malformed YAML")
    y.write_text("- a\n- b\n")
    with pytest.raises(InputError, match="expected a mapping at the top level"):
        C.load_config(C.SFTConfig, y)
    y.write_bytes(b"epochs: \xff\n")
    with pytest.raises(InputError, match="not valid UTF-8"):
        C.load_config(C.SFTConfig, y)
    with pytest.raises(InputError, match="config file does not exist"):
        C.load_config(C.SFTConfig, tmp_path / "missing.yaml")
    with pytest.raises(InputError, match="expected a file"):
        C.load_config(C.SFTConfig, tmp_path)
    y.write_text("")
    assert C.load_config(C.SFTConfig, y) == C.SFTConfig()  # an empty file is all defaults


def test_cli_reports_config_errors_with_exit_2(capsys):
    code, out, err = run_cli(["sft", "model=m", "data.train=d.jsonl", "out=o", "optim.lr=fast"], capsys)
    assert code == 2 and out == ""
    assert err == "instructkit: error: command line: field 'optim.lr': expected a number, got 'fast'\n"
    code, _, err = run_cli(["sft", "stray"], capsys)
    assert code == 2 and "unexpected argument 'stray'" in err
    code, _, err = run_cli(["frobnicate"], capsys)
    assert code == 2 and "unknown command 'frobnicate'" in err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_lists_every_field_with_doc_and_default(name, capsys):
    code, out, _ = run_cli([name, "--help"], capsys)
    assert code == 0
    cls = COMMANDS[name][0]
    rows = C.describe(cls)
    assert rows, name
    for field_name, tp, default, doc in rows:
        assert f"  {field_name} ({tp}, default {default!r})\n      {doc}\n" in out + "\n", field_name
    assert out.count(" (") >= len(rows)


def test_help_text_by_hand():
    text = C.help_text(C.SFTConfig)
    assert "  optim.lr (float, default 0.0001)\n      peak learning rate" in text
    assert "  template.kind (plain|chat, default 'plain')\n" in text
    assert "  epochs (int, default 16)\n      passes over the demonstrations (InstructGPT: 16)" in text


def test_describe_uses_the_stage_defaults():
    rows = {name: (tp, default) for name, tp, default, _ in C.describe(C.PretrainConfig)}
    assert rows["optim.lr"] == ("float", 3e-3)
    assert rows["optim.warmup_steps"] == ("int", 50)
    assert rows["init.family"] == ("gpt2|gpt_neox|llama|qwen2", "gpt2")


def test_every_field_is_documented():
    for name, (cls, *_rest) in COMMANDS.items():
        for field_name, _, _, doc in C.describe(cls):
            assert doc.strip(), f"{name}: {field_name} has no doc"


def test_saved_config_equals_the_loaded_one(tiny_base_model, tiny_corpus):
    meta = json.loads((tiny_base_model / "instructkit.json").read_text())
    argv = pretrain_argv(tiny_corpus, tiny_base_model)
    expected = C.load_config(C.PretrainConfig, None, argv[1:])
    assert meta["config"] == C.to_dict(expected)
    assert C.load_config(C.PretrainConfig, values=meta["config"]) == expected  # and it reloads as itself
    assert meta["config"]["init"]["d_model"] == 32 and meta["config"]["max_steps"] == 30
