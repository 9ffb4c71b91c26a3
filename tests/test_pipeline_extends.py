"""`extends: BASE.yaml` in a pipeline file: a stage named like a base stage replaces it in place with
its args deep-merged; new stages are appended or placed with `after:`/`before:` (never inside a
group); `vars` merge, `out`/`rounds` replace; chains, cycles and a missing base (exit 2); and
configs/rounds.yaml (now `extends: demo.yaml`) expands to exactly the stages of its former copy of
the demo's. Nothing runs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from instructkit.cli import main
from instructkit.errors import InputError
from instructkit.pipeline import load_pipeline

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, obj: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return str(path)


def base(root: Path) -> dict:
    return {"out": str(root), "vars": {"world": "{out}/world", "size": "small"},
            "stages": [
                {"name": "world", "command": "world build", "args": {"size": "{size}", "out": "{world}"}},
                {"name": "rm", "command": "rm",
                 "args": {"model": "S", "data": {"train": "R.jsonl", "val": "V.jsonl"}, "batch_size": 16,
                          "optim": {"lr": 1.0e-3, "warmup_steps": 10}}},
                {"name": "ppo", "command": "ppo", "group": "rl", "args": {"policy": "S", "reward_model": "{rm}"}},
                {"name": "ppo_ptx", "command": "ppo", "group": "rl", "args": {"policy": "S", "ptx_coef": 1.0}},
                {"name": "report", "command": "report", "args": {"run": "{out}", "out": "{out}/report.html"}}]}


def test_an_override_changes_one_arg_of_a_base_stage_in_place(tmp_path):
    write(tmp_path / "base.yaml", base(tmp_path / "b"))
    cfg = write(tmp_path / "x.yaml", {"extends": "base.yaml", "stages": [
        {"name": "rm", "args": {"optim": {"lr": 5.0e-4}, "data": {"train": ["R.jsonl", "R2.jsonl"]}}}]})
    root, stages = load_pipeline(cfg)
    assert root == str(tmp_path / "b")  # `out` inherited
    assert [s.name for s in stages] == ["world", "rm", "ppo", "ppo_ptx", "report"]
    rm = stages[1]
    assert rm.command == "rm"
    # mappings merge key by key; a list or a scalar replaces the base's value
    assert rm.args == {"model": "S", "data": {"train": ["R.jsonl", "R2.jsonl"], "val": "V.jsonl"}, "batch_size": 16,
                       "optim": {"lr": 5.0e-4, "warmup_steps": 10}, "out": f"{tmp_path / 'b'}/rm"}
    # other keys of the stage replace the base's: the command, a group
    cfg = write(tmp_path / "y.yaml", {"extends": "base.yaml", "stages": [
        {"name": "ppo_ptx", "command": "dpo", "group": None, "args": {"beta": 0.1}}]})
    _, stages = load_pipeline(cfg)
    ptx = stages[3]
    assert (ptx.name, ptx.command, ptx.group, ptx.args["ptx_coef"], ptx.args["beta"]) == ("ppo_ptx", "dpo", None,
                                                                                           1.0, 0.1)
    # an unknown reference in an override names the extending file and its own stage index
    cfg = write(tmp_path / "z.yaml", {"extends": "base.yaml", "stages": [{"name": "rm", "args": {"model": "{nope}"}}]})
    with pytest.raises(InputError) as e:
        load_pipeline(cfg)
    assert (e.value.path, e.value.field) == (cfg, "stages[0].args.model") and "unknown reference {nope}" in str(e.value)


def test_new_stages_are_appended_or_placed_before_or_after(tmp_path):
    write(tmp_path / "base.yaml", base(tmp_path / "b"))
    new = lambda name, **kw: {"name": name, "command": "eval", "args": {"models": ["w={world}"]}, **kw}  # noqa: E731
    cfg = write(tmp_path / "x.yaml", {"extends": "base.yaml", "stages": [
        new("last"),                                  # appended
        {**new("eval", before="report"), "args": {"models": ["p={ppo}"]}},
        new("first", before="world"),
        new("after_rl", after="ppo"),                 # not in group rl: after the whole group, never inside it
        new("dpo", after="ppo", group="rl"),          # in group rl: right after ppo, joining the group
        new("check", after="eval"),                   # relative to a stage this file added
        new("pre_rl", before="ppo_ptx")]})            # before the whole group
    _, stages = load_pipeline(cfg)
    assert [s.name for s in stages] == ["first", "world", "rm", "pre_rl", "ppo", "dpo", "ppo_ptx", "after_rl",
                                        "eval", "check", "report", "last"]
    by = {s.name: s for s in stages}
    assert by["dpo"].group == "rl" and by["after_rl"].group is None
    assert by["eval"].args == {"models": [f"p={tmp_path / 'b'}/ppo"], "out": f"{tmp_path / 'b'}/eval"}
    assert "before" not in by["eval"].args and "after" not in by["check"].args


@pytest.mark.parametrize("stage, field, words", [
    ({"name": "x", "command": "eval", "after": "nowhere"}, "stages[0].after",
     "no stage 'nowhere' (stages: world, rm, ppo, ppo_ptx, report)"),
    ({"name": "x", "command": "eval", "after": "rm", "before": "report"}, "stages[0]", "not both"),
    ({"name": "rm", "after": "report", "args": {}}, "stages[0].after", "replaces the base's in place"),
    ({"name": "x", "args": {}}, "stages[0]", "the base has no stage 'x' to replace"),
    ({"name": "rm", "args": ["lr=1"]}, "stages[0].args", "expected a mapping"),
])
def test_a_bad_stage_in_an_extending_file_names_file_and_field(tmp_path, capsys, stage, field, words):
    write(tmp_path / "base.yaml", base(tmp_path / "run"))
    cfg = write(tmp_path / "x.yaml", {"extends": "base.yaml", "stages": [stage]})
    with pytest.raises(InputError) as e:
        load_pipeline(cfg)
    assert (e.value.path, e.value.field) == (cfg, field) and words in e.value.message
    assert main(["pipeline", cfg]) == 2
    assert f"{cfg}: field '{field}'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_after_without_extends_is_an_error(tmp_path):
    s = base(tmp_path / "b")
    s["stages"].append({"name": "x", "command": "eval", "after": "rm"})
    cfg = write(tmp_path / "p.yaml", s)
    with pytest.raises(InputError) as e:
        load_pipeline(cfg)
    assert (e.value.path, e.value.field) == (cfg, "stages[5].after")


def test_vars_merge_out_and_rounds_replace_through_a_chain(tmp_path):
    b = base(tmp_path / "b")
    b["rounds"] = {"count": 3}  # never validated: the extending file replaces it
    write(tmp_path / "base" / "base.yaml", b)
    write(tmp_path / "mid" / "mid.yaml", {"extends": "../base/base.yaml", "vars": {"size": "large", "tag": "t1"},
                                          "stages": [{"name": "rm", "args": {"batch_size": 8}}]})
    cfg = write(tmp_path / "top.yaml", {"extends": "mid/mid.yaml", "out": str(tmp_path / "top"),
                                        "vars": {"tag": "t2"}, "rounds": None,
                                        "stages": [{"name": "rm", "args": {"optim": {"lr": 0.1}}},
                                                   {"name": "tagged", "command": "eval", "args": {"tag": "{tag}"}}]})
    root, stages = load_pipeline(cfg)
    by = {s.name: s for s in stages}
    assert root == str(tmp_path / "top")
    # the base's `world: "{out}/world"` follows the extending file's out; mid's size wins over base's
    assert by["world"].args == {"size": "large", "out": f"{tmp_path / 'top'}/world"}
    assert by["tagged"].args["tag"] == "t2"
    assert (by["rm"].args["batch_size"], by["rm"].args["optim"]) == (8, {"lr": 0.1, "warmup_steps": 10})
    assert not any(s.name.startswith("round_") for s in stages)
    # --out and stage_args still apply on top
    root, stages = load_pipeline(cfg, {"out": "/o", "stage_args": {"rm": {"batch_size": 4}}})
    assert (root, stages[0].out, stages[1].args["batch_size"]) == ("/o", "/o/world", 4)


def test_an_extends_cycle_is_an_error(tmp_path, capsys):
    a, b = tmp_path / "a.yaml", tmp_path / "sub" / "b.yaml"
    write(a, {"extends": "sub/b.yaml", "out": "x", "stages": []})
    write(b, {"extends": "../a.yaml", "stages": []})
    with pytest.raises(InputError) as e:
        load_pipeline(str(a))
    assert (e.value.path, e.value.field) == (str(b), "extends")
    assert e.value.message == f"cycle: {a} -> {b} -> {b.parent / '../a.yaml'}"
    assert main(["pipeline", str(a)]) == 2
    err = capsys.readouterr().err
    assert f"{b}: field 'extends': cycle" in err and "Traceback" not in err
    write(a, {"extends": "a.yaml", "stages": []})
    with pytest.raises(InputError, match="cycle"):
        load_pipeline(str(a))


def test_a_missing_or_bad_base_is_exit_2(tmp_path, capsys):
    cfg = write(tmp_path / "x.yaml", {"extends": "nope.yaml", "out": str(tmp_path / "run")})
    assert main(["pipeline", cfg]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: field 'extends': {tmp_path / 'nope.yaml'}: pipeline config does not exist" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()
    (tmp_path / "broken.yaml").write_text("out: x\nstages: [\n")
    cfg = write(tmp_path / "y.yaml", {"extends": "broken.yaml"})
    with pytest.raises(InputError) as e:  # the base's own errors name the base
        load_pipeline(cfg)
    assert e.value.path == str(tmp_path / "broken.yaml") and e.value.line and "malformed YAML" in e.value.message
    cfg = write(tmp_path / "z.yaml", {"extends": ["a.yaml"]})
    with pytest.raises(InputError) as e:
        load_pipeline(cfg)
    assert (e.value.path, e.value.field) == (cfg, "extends")


# configs/rounds.yaml before `extends`: configs/demo.yaml's stages copied verbatim but for round 1's
# labeling budget (rankings limit 1000), with out runs/rounds, this rounds block and eval_rounds before
# report (and its own header comment).
ROUNDS_BLOCK = {"count": 2, "prompts": "{world}/prompts/ppo.jsonl", "n_prompts": 1000,
                "label": {"command": "world label",
                          "args": {"world": "{world}", "k": "4..9", "pool": "train", "temperatures": "1.0,1.5"}},
                "rm": {"from": "rm"}, "policy": {"from": "ppo_ptx"}, "eval": {"from": "eval", "baseline": "sft"}}
EVAL_ROUNDS = {"name": "eval_rounds", "command": "eval",
               "args": {"models": ["round1={ppo_ptx}", "round2={round_2/policy}", "sft={sft}"], "baseline": "round1",
                        "prompts": "{world}/prompts/eval.jsonl", "world": "{world}", "judge": "panel"}}


def test_rounds_config_expands_to_the_stages_of_its_former_copy(tmp_path):
    flat = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    flat["out"], flat["rounds"] = "runs/rounds", ROUNDS_BLOCK
    next(s for s in flat["stages"] if s["name"] == "rankings")["args"]["limit"] = 1000
    flat["stages"].insert([s["name"] for s in flat["stages"]].index("report"), EVAL_ROUNDS)
    before = write(tmp_path / "rounds_flat.yaml", flat)
    for overrides in (None, {"out": "/r"}):
        expected = load_pipeline(before, overrides)
        assert load_pipeline(str(ROOT / "configs" / "rounds.yaml"), overrides) == expected
    assert [s.name for s in expected[1]] == [
        "world", "pretrain", "sft", "rankings", "rm", "dpo", "ppo", "ppo_ptx", "bon", "world_report", "eval",
        "round_2/prompts", "round_2/rankings", "round_2/rm", "round_2/policy", "round_2/eval", "eval_rounds", "report"]
    text = (ROOT / "configs" / "rounds.yaml").read_text()
    assert text.startswith("# instructkit pipeline configs/rounds.yaml") and "extends: demo.yaml" in text


def test_unknown_reference_in_vars_is_an_input_error(tmp_path):
    cfg = write(tmp_path / "v.yaml", {"out": str(tmp_path / "o"), "vars": {"a": "{nope}/x"},
                                      "stages": [{"name": "world", "command": "world build", "args": {}}]})
    with pytest.raises(InputError) as e:
        load_pipeline(cfg)
    assert e.value.field == "vars.a" and "unknown reference {nope}" in str(e.value)


def test_a_stage_alone_gets_every_core_and_the_environment_is_restored(monkeypatch):
    """run_stage(threads=N) sets the thread count every command reads (OMP_NUM_THREADS) for that
    stage only; INSTRUCTKIT_SOLO_THREADS overrides the core count."""
    from instructkit import pipeline as P

    seen = []
    monkeypatch.setitem(P.BUILTINS, "probe", lambda args: seen.append(os.environ.get("OMP_NUM_THREADS")))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("INSTRUCTKIT_SOLO_THREADS", "3")
    P.run_stage(P.Stage("p", "probe", {}, "x"), P.solo_threads())
    P.run_stage(P.Stage("p", "probe", {}, "x"))  # threads=0: left as it is
    assert seen == ["3", "1"] and os.environ["OMP_NUM_THREADS"] == "1"
    monkeypatch.delenv("INSTRUCTKIT_SOLO_THREADS")
    assert P.solo_threads() == (os.cpu_count() or 1)


def test_headline_config_is_the_demo_pretrained_like_the_headline_base():
    """configs/headline.yaml (make bench) = the demo's stages with the `headline` world and the
    pretraining recipe benchmarks/headline.py gives the larger base, so the two differ only in size."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("headline_bench", ROOT / "benchmarks" / "headline.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    base = bench.parser().parse_args([])
    demo = {s.name: s for s in load_pipeline(str(ROOT / "configs" / "demo.yaml"), {"out": "/r"})[1]}
    out, stages = load_pipeline(str(ROOT / "configs" / "headline.yaml"), {"out": "/r"})
    assert [s.name for s in stages] == list(demo)
    head = {s.name: s for s in stages}
    assert head["world"].args == {**demo["world"].args, "size": "headline"}
    pre = head["pretrain"].args
    assert (pre["seq_len"], pre["init"]["max_len"], pre["batch_size"], pre["max_steps"]) == (
        base.seq_len, base.seq_len, base.batch, base.steps)
    assert (pre["optim"]["lr"], pre["optim"]["warmup_steps"], pre["tokenizer"]["vocab_size"]) == (base.lr, 100, base.vocab_size)
    assert pre["init"]["family"] == base.family
    for name in demo:  # every later stage is the demo's, word for word
        if name not in ("world", "pretrain"):
            assert head[name] == demo[name], name
    assert base.policy == "runs/headline/ppo_ptx"
