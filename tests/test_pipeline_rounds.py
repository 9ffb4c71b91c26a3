"""Iterated RLHF rounds in a pipeline (`rounds:`): the expansion into ordinary stages (names, args,
outputs, every round's rankings in data.train, policy and reference chaining) without running
anything; bad blocks as exit-2 errors; the built-in `slice`; a tiny two-round run on the sandbox
chain, killed between rounds and inside round 2's RM, resumed to the end; the report's rounds
section on a fake run directory."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from instructkit import pipeline
from instructkit.cli import main
from instructkit.errors import InputError
from instructkit.evaluate import report
from instructkit.pipeline import load_pipeline, run_pipeline
from instructkit.rounds import slice_lines
from instructkit.run import is_complete

sys.path.insert(0, str(Path(__file__).parent))
from sandbox_chain import tiny_chain  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[1]

ROUNDS = {"count": 3, "prompts": "{world}/prompts/ppo.jsonl", "n_prompts": 5,
          "label": {"command": "world label", "args": {"world": "{world}", "k": "2..3", "pool": "train"}},
          "rm": {"from": "rm"}, "policy": {"from": "ppo"}, "eval": {"from": "eval"}}


def spec(root: Path, world: str = "W", sft: str = "S", rankings: str = "R.jsonl", rounds: dict | None = None,
         tail: list | None = None) -> dict:
    """A pipeline: rm -> ppo -> eval (each round repeats them), then whatever `tail` adds."""
    return {"out": str(root), "vars": {"world": world, "sft": sft},
            "rounds": {**ROUNDS, **(rounds or {})},
            "stages": [
                {"name": "rm", "command": "rm",
                 "args": {"model": "{sft}", "data": {"train": rankings}, "batch_size": 16, "save_every": 1,
                          "threads": 1}},
                {"name": "ppo", "command": "ppo",
                 "args": {"policy": "{sft}", "reward_model": "{rm}", "prompts": "{world}/prompts/ppo.jsonl",
                          "eval_prompts": "", "select": "last", "episodes": 16, "rollout_batch": 8, "minibatch": 8,
                          "ppo_epochs": 1, "warmup_iterations": 1, "max_new_tokens": 16, "require_gate": False,
                          "threads": 1}},
                {"name": "eval", "command": "eval",
                 "args": {"models": ["sft={sft}", "ppo={ppo}"], "baseline": "sft", "prompts": "{world}/prompts/eval.jsonl",
                          "world": "{world}", "judge": "panel", "n_prompts": 8, "max_new_tokens": 16,
                          "alignment_tax": False, "threads": 1}},
                *(tail or [])]}


def write(path: Path, obj: dict) -> str:
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return str(path)


def test_rounds_expand_into_ordinary_stages(tmp_path):
    root = tmp_path / "run"
    tail = [{"name": "final", "command": "eval",
             "args": {"models": ["round1={ppo}", "round3={round_3/policy}"], "baseline": "round1",
                      "prompts": "P", "rm3": "{round_3/rm}"}}]
    cfg = write(tmp_path / "p.yaml", spec(root, tail=tail))
    _, stages = load_pipeline(cfg, {"stage_args": {"ppo": {"episodes": 8}, "round_3/rm": {"epochs": 2}}})
    by = {s.name: s for s in stages}
    kinds = ["prompts", "rankings", "rm", "policy", "eval"]
    assert [s.name for s in stages] == ["rm", "ppo", "eval", *[f"round_{r}/{k}" for r in (2, 3) for k in kinds],
                                        "final"]
    for r in (2, 3):
        d = f"{root}/round_{r}"
        assert [by[f"round_{r}/{k}"].out for k in kinds] == [
            f"{d}/prompts.jsonl", f"{d}/rankings.jsonl", f"{d}/rm", f"{d}/policy", f"{d}/eval"]
        assert all(by[f"round_{r}/{k}"].group is None for k in kinds)
        previous = f"{root}/ppo" if r == 2 else f"{root}/round_2/policy"
        # fresh prompts: a different slice of the file per round
        assert by[f"round_{r}/prompts"].command == "slice"
        assert by[f"round_{r}/prompts"].args == {"input": "W/prompts/ppo.jsonl", "start": (r - 2) * 5, "n": 5,
                                                 "out": f"{d}/prompts.jsonl"}
        # the labelers rank samples of the previous round's policy
        assert by[f"round_{r}/rankings"].command == "world label"
        assert by[f"round_{r}/rankings"].args == {"world": "W", "k": "2..3", "pool": "train", "model": previous,
                                                  "prompts": f"{d}/prompts.jsonl", "out": f"{d}/rankings.jsonl"}
        # the RM: the same args, on round 1's rankings and every later round's
        rm = by[f"round_{r}/rm"].args
        assert rm["data"]["train"] == ["R.jsonl"] + [f"{root}/round_{q}/rankings.jsonl" for q in range(2, r + 1)]
        assert (rm["model"], rm["batch_size"], rm["out"]) == ("S", 16, f"{d}/rm")
        # compared with the previous round's RM on the newest samples
        assert rm["eval"] == {"previous": f"{root}/rm" if r == 2 else f"{root}/round_2/rm"}
        # the policy continues from the last round's against this round's RM; KL stays measured to SFT
        pol = by[f"round_{r}/policy"].args
        assert (pol["policy"], pol["reference"], pol["reward_model"], pol["out"]) == (previous, "S", f"{d}/rm",
                                                                                    f"{d}/policy")
        assert pol["episodes"] == 8 and pol["rollout_batch"] == 8  # the copied stage's args, overrides included
        ev = by[f"round_{r}/eval"].args
        assert ev["models"] == [f"round{r}={d}/policy", f"round{r - 1}={previous}", "sft=S"]
        assert (ev["baseline"], ev["judge"], ev["out"]) == (f"round{r - 1}", "panel", f"{d}/eval")
    assert by["round_3/rm"].args["epochs"] == 2 and "epochs" not in by["round_2/rm"].args  # stage_args by round name
    # later stages name round outputs as {round_R/kind}
    assert by["final"].args["models"] == [f"round1={root}/ppo", f"round3={root}/round_3/policy"]
    assert by["final"].args["rm3"] == f"{root}/round_3/rm"
    # a list in the copied RM's data.train is extended; baseline sft; count 1 adds nothing
    _, stages = load_pipeline(write(tmp_path / "q.yaml", spec(root, rankings="A.jsonl,B.jsonl",
                                                              rounds={"count": 2, "eval": {"from": "eval", "baseline": "sft"}})))
    by = {s.name: s for s in stages}
    assert by["round_2/rm"].args["data"]["train"] == ["A.jsonl", "B.jsonl", f"{root}/round_2/rankings.jsonl"]
    assert by["round_2/eval"].args["baseline"] == "sft"
    _, stages = load_pipeline(write(tmp_path / "one.yaml", spec(root, rounds={"count": 1})))
    assert [s.name for s in stages] == ["rm", "ppo", "eval"]


def dpo_spec(root: Path, rounds: dict | None = None, **kw) -> dict:
    """The same pipeline with a DPO stage as the policy each round repeats (no RM unless `rounds` adds one)."""
    s = spec(root, rounds={"policy": {"from": "dpo"}, **(rounds or {})}, **kw)
    if "rm" not in (rounds or {}):
        del s["rounds"]["rm"]
    s["stages"].insert(1, {"name": "dpo", "command": "dpo",
                           "args": {"model": "{sft}", "data": {"train": s["stages"][0]["args"]["data"]["train"]},
                                    "epochs": 1, "batch_size": 8, "threads": 1}})
    s["stages"][3]["args"]["models"] = ["sft={sft}", "dpo={dpo}"]
    return s


def test_rounds_with_a_direct_method_continue_it_on_each_rounds_own_rankings(tmp_path):
    root = tmp_path / "run"
    _, stages = load_pipeline(write(tmp_path / "d.yaml", dpo_spec(root)))
    by = {s.name: s for s in stages}
    kinds = ["prompts", "rankings", "policy", "eval"]  # no reward model: DPO needs none
    assert [s.name for s in stages] == ["rm", "dpo", "ppo", "eval", *[f"round_{r}/{k}" for r in (2, 3) for k in kinds]]
    for r in (2, 3):
        d, previous = f"{root}/round_{r}", f"{root}/dpo" if r == 2 else f"{root}/round_2/policy"
        assert by[f"round_{r}/rankings"].args["model"] == previous  # the labelers rank the last policy's samples
        pol = by[f"round_{r}/policy"]
        assert pol.command == "dpo" and (pol.args["model"], pol.out) == (previous, f"{d}/policy")
        # on-policy: this round's rankings only; the starting policy is the frozen reference
        assert pol.args["data"] == {"train": f"{d}/rankings.jsonl"} and "reference" not in pol.args
        assert (pol.args["epochs"], pol.args["batch_size"]) == (1, 8)
        assert by[f"round_{r}/eval"].args["models"] == [f"round{r}={d}/policy", f"round{r - 1}={previous}", "sft=S"]
    # with an `rm` block each round still trains an RM (for its gates) on every round's rankings
    _, stages = load_pipeline(write(tmp_path / "dr.yaml", dpo_spec(root, rounds={"rm": {"from": "rm"}})))
    by = {s.name: s for s in stages}
    assert by["round_2/rm"].args["data"]["train"] == ["R.jsonl", f"{root}/round_2/rankings.jsonl"]
    assert by["round_2/policy"].args["data"]["train"] == f"{root}/round_2/rankings.jsonl"
    # a direct method's reference is where it starts; PPO still needs its RM
    bad = dpo_spec(root)
    bad["rounds"]["policy"]["reference"] = "sft"
    with pytest.raises(InputError) as e:
        load_pipeline(write(tmp_path / "bad.yaml", bad))
    assert e.value.field == "rounds.policy.reference" and "starts from" in e.value.message
    no_rm = spec(root)
    del no_rm["rounds"]["rm"]
    with pytest.raises(InputError) as e:
        load_pipeline(write(tmp_path / "no_rm.yaml", no_rm))
    assert e.value.field == "rounds.rm" and "expected {from: STAGE}" in e.value.message


@pytest.mark.slow
def test_two_dpo_rounds_end_to_end(tiny_chain, tmp_path):
    root = tmp_path / "run"
    s = dpo_spec(root, world=str(tiny_chain["world"]), sft=str(tiny_chain["sft"]),
                 rankings=str(tiny_chain["rankings"]), rounds={"count": 2, "n_prompts": 8})
    s["stages"] = [x for x in s["stages"] if x["name"] not in ("rm", "ppo")]
    s["stages"][0]["args"]["ref_cache"] = str(tmp_path / "cache")
    cfg = write(tmp_path / "dpo_rounds.yaml", s)
    run_pipeline(cfg)
    d = root / "round_2"
    meta = json.loads((d / "policy" / "instructkit.json").read_text())
    assert meta["complete"] and meta["stage"] == "dpo"
    assert meta["config"]["model"] == str(root / "dpo") and meta["config"]["data"]["train"] == str(d / "rankings.jsonl")
    from safetensors.torch import load_file
    before, after = load_file(root / "dpo" / "model.safetensors"), load_file(d / "policy" / "model.safetensors")
    assert any(not (before[k] == after[k]).all() for k in before)  # round 2 moved from round 1's policy
    ev = json.loads((d / "eval" / "eval.json").read_text())
    assert ev["baseline"] == "round1" and 0 <= ev["models"]["round2"]["win_rate"]["rate"] <= 1
    rounds = report.build_summary(report.ReportConfig(run=str(root)))["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and rounds[1]["vs_previous"]["eval"] == "round_2/eval"


def test_rounds_may_measure_kl_to_the_previous_round(tmp_path):
    root = tmp_path / "run"
    _, stages = load_pipeline(write(tmp_path / "p.yaml", spec(root, rounds={"policy": {"from": "ppo",
                                                                                        "reference": "previous"}})))
    by = {s.name: s for s in stages}
    # each round's KL penalty is to the policy it starts from; the eval's scale model is still SFT
    assert by["round_2/policy"].args["reference"] == by["round_2/policy"].args["policy"] == f"{root}/ppo"
    assert by["round_3/policy"].args["reference"] == f"{root}/round_2/policy"
    assert by["round_3/eval"].args["models"][-1] == "sft=S"
    _, stages = load_pipeline(write(tmp_path / "s.yaml", spec(root, rounds={"policy": {"from": "ppo",
                                                                                        "reference": "sft"}})))
    assert {s.name: s for s in stages}["round_3/policy"].args["reference"] == "S"


def test_rounds_follow_their_group_and_the_configs():
    # configs/rounds.yaml: the demo's stages, round 2 after `eval`, then eval_rounds and the report
    _, stages = load_pipeline(str(ROOT / "configs" / "rounds.yaml"), {"out": "/r"})
    names = [s.name for s in stages]
    i = names.index("eval")
    assert names[i + 1:] == ["round_2/prompts", "round_2/rankings", "round_2/rm", "round_2/policy", "round_2/eval",
                             "eval_rounds", "report"]
    by = {s.name: s for s in stages}
    assert by["round_2/policy"].args["ptx_coef"] == by["ppo_ptx"].args["ptx_coef"] and by["round_2/policy"].args["reference"] == "/r/sft"
    assert by["round_2/rm"].args["data"]["train"] == ["/r/rankings.jsonl", "/r/round_2/rankings.jsonl"]
    assert by["eval_rounds"].args["models"] == ["round1=/r/ppo_ptx", "round2=/r/round_2/policy", "sft=/r/sft"]
    assert by["eval_rounds"].args["baseline"] == "round1"
    # round 1 labels 1,000 prompts of SFT samples, round 2 1,000 of round 1's policy; the demo all 3,000
    assert by["rankings"].args["limit"] == 1000 and by["round_2/rankings"].args["model"] == "/r/ppo_ptx"
    # demo.yaml keeps its stages
    _, demo = load_pipeline(str(ROOT / "configs" / "demo.yaml"))
    assert "limit" not in {s.name: s for s in demo}["rankings"].args
    assert [s.name for s in demo] == ["world", "pretrain", "sft", "rankings", "rm", "dpo", "ppo", "ppo_ptx",
                                      "bon", "world_report", "eval", "report"]


def test_rounds_after_a_group_and_after(tmp_path):
    s = spec(tmp_path, rounds={"eval": None})
    del s["rounds"]["eval"]
    s["stages"][1]["group"] = "rl"
    s["stages"].insert(2, {"name": "dpo", "command": "dpo", "group": "rl", "args": {}})
    _, stages = load_pipeline(write(tmp_path / "g.yaml", s))
    assert [x.name for x in stages][:5] == ["rm", "ppo", "dpo", "round_2/prompts", "round_2/rankings"]
    s["rounds"]["after"] = "eval"
    _, stages = load_pipeline(write(tmp_path / "a.yaml", s))
    assert [x.name for x in stages][:5] == ["rm", "ppo", "dpo", "eval", "round_2/prompts"]


@pytest.mark.parametrize("change, field, words", [
    ({"count": 0}, "rounds.count", "expected an integer >= 1"),
    ({"count": "2"}, "rounds.count", "expected an integer >= 1"),
    ({"n_prompts": 0}, "rounds.n_prompts", "expected an integer >= 1"),
    ({"prompts": ""}, "rounds.prompts", "prompts file"),
    ({"rm": {"from": "reward"}}, "rounds.rm.from", "no stage 'reward' (stages: rm, ppo, eval)"),
    ({"policy": {"from": "rm"}}, "rounds.policy.from", "stage 'rm' runs `rm`, expected `ppo`"),
    ({"policy": "ppo"}, "rounds.policy", "expected {from: STAGE}"),
    ({"eval": {"from": "eval", "baseline": "base"}}, "rounds.eval.baseline", "expected previous or sft"),
    ({"rm": {"from": "rm", "args": {}}}, "rounds.rm.args", "unknown field (known: from)"),
    ({"rm": {"from": "rm", "reference": "sft"}}, "rounds.rm.reference", "unknown field (known: from)"),
    ({"policy": {"from": "ppo", "reference": "base"}}, "rounds.policy.reference", "expected sft or previous"),
    ({"rounds": 2}, "rounds.rounds", "unknown field"),
    ({"label": {"command": "world label", "args": {"model": "{sft}"}}}, "rounds.label.args.model", "set by each round"),
    ({"after": "rm"}, "rounds.after", "must come after it"),
    ({"prompts": "{nowhere}/p.jsonl"}, "rounds.prompts", "unknown reference {nowhere}"),
])
def test_a_bad_rounds_block_names_file_and_field(tmp_path, capsys, change, field, words):
    cfg = write(tmp_path / "bad.yaml", spec(tmp_path / "run", rounds=change))
    with pytest.raises(InputError) as e:
        load_pipeline(cfg)
    assert (e.value.path, e.value.field) == (cfg, field) and words in e.value.message
    assert main(["pipeline", cfg]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: field '{field}'" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_slice_takes_lines_modulo_the_file(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(5)) + "\n")
    slice_lines({"input": str(src), "start": 3, "n": 4, "out": str(tmp_path / "s" / "out.jsonl")})
    got = [json.loads(x)["prompt"] for x in (tmp_path / "s" / "out.jsonl").read_text().splitlines()]
    assert got == ["p3", "p4", "p0", "p1"]
    with pytest.raises(InputError, match="does not exist"):
        slice_lines({"input": str(tmp_path / "none.jsonl"), "start": 0, "n": 1, "out": str(tmp_path / "x.jsonl")})
    with pytest.raises(InputError, match="unknown field"):
        slice_lines({"input": str(src), "n": 1, "out": str(tmp_path / "x.jsonl"), "stride": 2})
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:ppo iteration")  # a 16-token tiny policy never ends with EOS
def test_two_rounds_end_to_end_killed_and_resumed(tiny_chain, tmp_path, monkeypatch, capsys):
    root = tmp_path / "run"
    cfg = write(tmp_path / "rounds.yaml", spec(root, world=str(tiny_chain["world"]), sft=str(tiny_chain["sft"]),
                                               rankings=str(tiny_chain["rankings"]),
                                               rounds={"count": 2, "n_prompts": 8}))
    _, stages = load_pipeline(cfg)
    round_2 = [s for s in stages if s.name.startswith("round_2/")]
    assert len(round_2) == 5

    # killed between rounds: round 1 is complete, round 2 has not started
    real_run_stage = pipeline.run_stage

    def killed_at(name):
        def run_stage(stage, threads=0):
            if stage.name == name:
                raise KeyboardInterrupt
            real_run_stage(stage, threads)
        return run_stage
    monkeypatch.setattr(pipeline, "run_stage", killed_at("round_2/prompts"))
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg)
    assert all(is_complete(root / n) for n in ("rm", "ppo", "eval")) and not (root / "round_2").exists()

    # killed inside round 2, in the middle of its RM's training (after a checkpoint)
    monkeypatch.setattr(pipeline, "run_stage", real_run_stage)
    from instructkit.stages import rm as rm_stage
    real_fb, calls = rm_stage.forward_backward, []

    def killed_at_step_3(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_fb(*a, **kw)
    monkeypatch.setattr(rm_stage, "forward_backward", killed_at_step_3)
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg)
    out = capsys.readouterr().out
    assert all(f"pipeline: {n}: complete, skipped" in out for n in ("rm", "ppo", "eval"))
    d = root / "round_2"
    assert (d / "prompts.jsonl").is_file() and (d / "rankings.jsonl").is_file()
    assert (d / "rm" / "checkpoint" / "state.pt").exists() and not is_complete(d / "rm")

    # resumed: the skipped stages stay, round 2's RM continues from its checkpoint, the rest runs
    monkeypatch.setattr(rm_stage, "forward_backward", real_fb)
    run_pipeline(cfg)
    out = capsys.readouterr().out
    assert "resuming from step 2" in out
    assert all(f"pipeline: round_2/{n}: complete, skipped" in out for n in ("prompts", "rankings"))
    for s in stages:
        assert Path(s.out).is_file() or is_complete(s.out), s.name
    ppo_prompts = (tiny_chain["world"] / "prompts" / "ppo.jsonl").read_text().splitlines()
    assert (d / "prompts.jsonl").read_text().splitlines() == ppo_prompts[:8]
    labeled = [json.loads(x)["prompt"] for x in (d / "rankings.jsonl").read_text().splitlines()]
    assert labeled == [json.loads(x)["prompt"] for x in ppo_prompts[:8]]
    rm_meta = json.loads((d / "rm" / "instructkit.json").read_text())
    files = [str(tiny_chain["rankings"]), str(d / "rankings.jsonl")]
    assert rm_meta["config"]["data"]["train"] == files and rm_meta["inputs"]["data.train"]["path"] == files
    assert rm_meta["gates"]["latest"]["previous"] == str(root / "rm") and rm_meta["gates"]["latest"]["data"] == files[1]
    pol = json.loads((d / "policy" / "instructkit.json").read_text())["config"]
    assert (pol["policy"], pol["reference"], pol["reward_model"]) == (str(root / "ppo"), str(tiny_chain["sft"]),
                                                                      str(d / "rm"))
    ev = json.loads((d / "eval" / "eval.json").read_text())
    assert ev["baseline"] == "round1" and set(ev["models"]) == {"round2", "round1", "sft"}
    assert 0 <= ev["models"]["round2"]["win_rate"]["rate"] <= 1

    # a rerun skips everything; a stage without its complete marker is redone; --from names a round stage
    run_pipeline(cfg)
    assert capsys.readouterr().out.count("complete, skipped") == len(stages)
    (d / "policy" / "instructkit.json").unlink()
    run_pipeline(cfg)
    out = capsys.readouterr().out
    assert f"pipeline: round_2/policy: ppo -> {d / 'policy'}" in out and out.count("complete, skipped") == len(stages) - 1
    assert is_complete(d / "policy")
    before = (d / "eval" / "instructkit.json").stat().st_mtime
    assert main(["pipeline", cfg, "--from", "round_2/eval"]) == 0
    assert (d / "eval" / "instructkit.json").stat().st_mtime > before and is_complete(d / "rm")
    rounds = report.build_summary(report.ReportConfig(run=str(root)))["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert "bon_gain" in rounds[1]["gates"] and set(rounds[1]["eval"]["win_rate"]) == {"round2", "sft"}
    # round 1's policy is the one round 2 continued from; round 2 against it is round_2/eval's win rate
    ppo_kl = json.loads((root / "ppo" / "instructkit.json").read_text())["metrics"]["kl"]
    assert rounds[0]["policy"]["kl"] == ppo_kl and rounds[1]["policy"]["kl"] == pytest.approx(
        json.loads((d / "policy" / "instructkit.json").read_text())["metrics"]["kl"])
    assert rounds[1]["vs_previous"] == {"win_rate": ev["models"]["round2"]["win_rate"], "eval": "round_2/eval"}
    assert rounds[1]["samples"] and all({"prompt", "round1", "round2"} <= set(s) for s in rounds[1]["samples"])


def test_report_shows_a_rounds_section(tmp_path, capsys):
    root = tmp_path / "run"

    def rm(d: Path, gain: float, acc: float, latest: dict | None = None):
        d.mkdir(parents=True)
        (d / "instructkit.json").write_text(json.dumps({
            "stage": "rm", "complete": True, "metrics": {"val_accuracy": acc, "val_gold_accuracy": acc + 0.1},
            "gates": {"bon_gain": gain, "bon_n": "4..9", "judge": "gold utility", **({"latest": latest} if latest else {})}}))

    def ev(d: Path, r: int):
        d.mkdir(parents=True)
        w = {"rate": 0.6, "low": 0.5, "high": 0.7, "n": 30}
        (d / "eval.json").write_text(json.dumps({"baseline": f"round{r - 1}", "models": {
            f"round{r}": {"win_rate": w}, f"round{r - 1}": {}, "sft": {"win_rate": {**w, "rate": 0.4}}}}))
    def policy(d: Path, kl: float, previous: Path | None = None):
        d.mkdir(parents=True)
        inputs = {"policy": {"path": str(previous)}} if previous else {}
        (d / "instructkit.json").write_text(json.dumps({"stage": "ppo", "complete": True, "inputs": inputs, "metrics": {
            "kl": kl, "kl_coef": 0.2, "eval_score": 2.5 + kl / 10}}))

    rm(root / "rm", 0.05, 0.61)
    policy(root / "ppo_ptx", 1.0)
    for r in (2, 3):
        rm(root / f"round_{r}" / "rm", 0.01 * r, 0.6 + 0.01 * r, None if r == 3 else {
            "n_pairs": 4455, "accuracy": 0.575, "previous_accuracy": 0.512, "gold_accuracy": 0.616,
            "previous_gold_accuracy": 0.578, "bon_gain": 0.0719, "previous_bon_gain": -0.0272})
        ev(root / f"round_{r}" / "eval", r)
        policy(root / f"round_{r}" / "policy", float(r), root / ("ppo_ptx" if r == 2 else f"round_{r - 1}/policy"))
    # round 2's eval was against SFT; a separate eval (as configs/rounds.yaml's eval_rounds) has round 2 vs round 1
    (root / "round_2" / "eval" / "eval.json").write_text(json.dumps({"baseline": "sft", "models": {
        "round2": {"win_rate": {"rate": 0.65, "low": 0.6, "high": 0.7, "n": 600}}, "sft": {}}}))
    (root / "eval_rounds").mkdir()
    (root / "eval_rounds" / "eval.json").write_text(json.dumps({"baseline": "round1", "models": {
        "round1": {}, "round2": {"win_rate": {"rate": 0.55, "low": 0.51, "high": 0.59, "n": 600}}}}))
    (root / "round_2" / "eval" / "samples.jsonl").write_text("".join(json.dumps(
        {"prompt": f"p{i} <x>", "task": t, "round2": f"new {i}", "round1": f"old {i}", "sft": "s"}) + "\n"
        for i, t in enumerate(["copy", "copy", "fact"])))
    (root / "round_notes").mkdir()  # not a round
    summary = report.run(report.ReportConfig(run=str(root)))
    assert [r["round"] for r in summary["rounds"]] == [1, 2, 3]
    assert summary["rounds"][2]["gates"]["bon_gain"] == pytest.approx(0.03) and "eval" not in summary["rounds"][0]
    assert [r["policy"]["kl"] for r in summary["rounds"]] == [1.0, 2.0, 3.0]
    assert summary["rounds"][1]["vs_previous"] == {"win_rate": {"rate": 0.55, "low": 0.51, "high": 0.59, "n": 600},
                                                   "eval": "eval_rounds"}
    assert summary["rounds"][2]["vs_previous"]["eval"] == "round_3/eval" and "vs_previous" not in summary["rounds"][0]
    # one sample per task, round 1 and round 2 side by side; round 3's eval has no samples file
    assert summary["rounds"][1]["samples"] == [{"prompt": "p0 <x>", "task": "copy", "round1": "old 0", "round2": "new 0"},
                                               {"prompt": "p2 <x>", "task": "fact", "round1": "old 2", "round2": "new 2"}]
    assert "samples" not in summary["rounds"][2]
    html = (root / "report.html").read_text()
    table = html[html.index("<table id='rounds'>"):]
    table = table[:table.index("</table>")]
    assert table.count("<tr>") == 4  # header + 3 rounds
    assert "+0.0300 (K 4..9, gold utility)" in table and "63.0% (gold 73.0%)" in table
    assert "round3 vs round2: 60.0% [50.0%, 70.0%]" in table and "sft vs round2: 40.0%" in table
    assert "KL 1.00 (coef 0.2), held-out gold 2.600" in table and "KL 3.00 (coef 0.2), held-out gold 2.800" in table
    assert "51.2% -&gt; 57.5% (gold 57.8% -&gt; 61.6%), best-of-K gain -0.0272 -&gt; +0.0719; 4455 pairs" in table
    assert "55.0% [51.0%, 59.0%] (eval_rounds)" in table and "60.0% [50.0%, 70.0%] (round_3/eval)" in table
    samples = html[html.index("<h3>Round 2 vs round 1: samples</h3>"):]
    samples = samples[:samples.index("</table>")]
    assert samples.count("<tr>") == 3 and "p0 &lt;x&gt;" in samples and "<pre>old 2</pre></td><td><pre>new 2</pre>" in samples
    out = capsys.readouterr().out
    assert "round 3: RM best-of-K gain +0.0300" in out and "on the previous policy's samples 51.2% -> 57.5%" in out and "vs the previous round 55.0% [51.0%, 59.0%]" in out
    # no round directories: no section
    assert "rounds" not in report.build_summary(report.ReportConfig(run=str(root / "rm")))
