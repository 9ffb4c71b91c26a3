"""Stages of a group scheduled by their dependencies: the deps found when a pipeline loads (paths in
args, `needs:`), the `parallel` key, `schedule` driven by fake stages (never more than `parallel`
at once, never before a dep ends, no barrier, a failure stops new starts), and a tiny group of real
child processes and a builtin through `instructkit pipeline`."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from instructkit.cli import main
from instructkit.errors import InputError
from instructkit.pipeline import load_pipeline, read_pipeline, run_pipeline, schedule

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, obj: dict) -> str:
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return str(path)


# ---------------------------------------------------------------------------- dependencies


def test_deps_of_the_demo_as_loaded():
    _, stages = load_pipeline(str(ROOT / "configs" / "demo.yaml"))
    deps = {s.name: set(s.deps) for s in stages}
    assert {"rm"} <= deps["ppo"] and {"rm"} <= deps["ppo_ptx"] and {"rm"} <= deps["bon"]
    assert "rm" not in deps["dpo"] and "rankings" in deps["dpo"]
    assert {"ppo", "ppo_ptx", "dpo", "sft", "pretrain"} <= deps["eval"]  # name=path and path@0.3 forms
    assert "rm" not in deps["eval"] and "bon" not in deps["eval"]
    assert deps["report"] == {s.name for s in stages[:-1]}  # run: {out} holds every earlier output
    assert deps["world"] == set()


def test_deps_are_path_components_after_normalisation(tmp_path):
    o = str(tmp_path / "o")
    stages = [{"name": n, "command": "slice", "args": {}} for n in ("a", "a2", "b", "c")]
    stages.append({"name": "x", "command": "eval", "args": {
        "models": [f"m={o}/./a@0.3"],              # name=path@temperature, not normalised as written
        "nested": {"list": [f"{o}//c/sub/file"]},  # a path inside c's output, at depth
        "other": f"{o}/a_t0.3,{o}/bb",               # a prefix of a name is not a path component
        "out": f"{o}/b/x"}})                        # its own output is not an input
    _, st = load_pipeline(write(tmp_path / "p.yaml", {"out": o, "stages": stages}))
    assert st[-1].deps == ("a", "c")


def test_needs_adds_a_dep_and_names_only_earlier_stages(tmp_path, capsys):
    stages = [{"name": "a", "command": "slice", "args": {}},
              {"name": "b", "command": "slice", "args": {}, "needs": ["a"]},
              {"name": "c", "command": "slice", "args": {}}]
    _, st = load_pipeline(write(tmp_path / "p.yaml", {"out": str(tmp_path / "o"), "stages": stages}))
    assert [s.deps for s in st] == [(), ("a",), ()]
    for bad in (["c"], ["nope"], "a"):  # later, unknown, not a list
        stages[1]["needs"] = bad
        cfg = write(tmp_path / "p.yaml", {"out": str(tmp_path / "o"), "stages": stages})
        with pytest.raises(InputError) as e:
            load_pipeline(cfg)
        assert e.value.field == "stages.b.needs" and e.value.path == cfg
    assert main(["pipeline", cfg]) == 2
    assert "field 'stages.b.needs'" in capsys.readouterr().err


def test_round_and_extends_stages_get_deps():
    _, stages = load_pipeline(str(ROOT / "configs" / "rounds.yaml"), {"out": "/r"})
    deps = {s.name: set(s.deps) for s in stages}
    assert {"ppo_ptx", "round_2/prompts"} <= deps["round_2/rankings"]
    assert {"rankings", "round_2/rankings"} <= deps["round_2/rm"]
    assert {"ppo_ptx", "round_2/rm"} <= deps["round_2/policy"]
    assert {"ppo_ptx", "round_2/policy"} <= deps["eval_rounds"]  # a stage added by the extending file
    assert "round_2/eval" in deps["report"]


def test_parallel_defaults_to_the_cpu_count_and_a_bad_value_names_the_field(tmp_path, capsys):
    spec = {"out": str(tmp_path / "o"), "stages": [{"name": "a", "command": "slice", "args": {}}]}
    assert read_pipeline(write(tmp_path / "p.yaml", spec)).parallel == (os.cpu_count() or 1)
    assert read_pipeline(write(tmp_path / "p.yaml", {**spec, "parallel": 3})).parallel == 3
    assert read_pipeline(str(tmp_path / "p.yaml"), {"parallel": 1}).parallel == 1
    for bad in (0, -1, "2", True, 1.5):
        with pytest.raises(InputError) as e:
            read_pipeline(write(tmp_path / "p.yaml", {**spec, "parallel": bad}))
        assert e.value.field == "parallel"
    assert main(["pipeline", write(tmp_path / "p.yaml", spec), "--parallel", "0"]) == 2
    assert "field 'parallel'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- scheduling


class Fakes:
    """Stages that sleep in a thread: start(name) -> wait; records (start, end) of each."""

    def __init__(self, seconds: dict[str, float], fail: dict[str, int] | None = None):
        self.seconds, self.fail, self.times, self.lock = seconds, fail or {}, {}, threading.Lock()

    def start(self, name: str):
        t0 = time.perf_counter()
        with self.lock:
            self.times[name] = [t0, None]

        def wait() -> int:
            time.sleep(max(0.0, t0 + self.seconds[name] - time.perf_counter()))
            with self.lock:
                self.times[name][1] = time.perf_counter()
            return self.fail.get(name, 0)
        return wait

    def most_at_once(self) -> int:
        return max(sum(s <= t < e for s, e in self.times.values()) for t, _ in self.times.values())


@pytest.mark.parametrize("parallel", [1, 2, 3])
def test_never_more_than_parallel_and_never_before_a_dep_ends(parallel):
    # the demo's prep and rl stages as one group
    deps = {"ppo": ("rm",), "ppo_ptx": ("rm",), "bon": ("rm",)}
    names = ["world_report", "rm", "dpo", "ppo", "ppo_ptx", "bon"]
    fakes = Fakes({"world_report": 0.1, "rm": 0.2, "dpo": 0.3, "ppo": 0.2, "ppo_ptx": 0.2, "bon": 0.1})
    schedule(names, deps, parallel, fakes.start)
    assert set(fakes.times) == set(names)
    assert fakes.most_at_once() == parallel
    for name, ds in deps.items():
        assert all(fakes.times[name][0] >= fakes.times[d][1] for d in ds), name
    starts = sorted(names, key=lambda n: fakes.times[n][0])
    if parallel == 1:
        assert starts == names  # one at a time, in file order
    else:
        assert starts[:parallel] == names[:parallel]  # the earliest ready first


def test_a_stage_starts_when_its_deps_end_not_when_the_group_does():
    fakes = Fakes({"a": 0.1, "b": 0.8, "c": 0.1, "d": 0.1})
    schedule(["a", "b", "c", "d"], {"c": ("a",), "d": ("b",)}, 2, fakes.start)
    t = fakes.times
    assert t["a"][1] <= t["c"][0] < t["b"][1]  # c ran beside b, in a's core
    assert t["d"][0] >= t["b"][1]
    assert fakes.most_at_once() == 2


def test_a_failure_stops_new_starts_and_waits_for_the_running_ones():
    # real child processes: a fails at once, b runs on; c needs a, d needs nothing but comes later
    code = {"a": "import sys; sys.exit(3)", "b": "import time; time.sleep(1.0)", "c": "pass", "d": "pass"}
    procs = {}

    def start(name):
        procs[name] = subprocess.Popen([sys.executable, "-c", code[name]])
        return procs[name].wait

    with pytest.raises(InputError) as e:
        schedule(["a", "b", "c", "d"], {"c": ("a",)}, 2, start)
    assert set(procs) == {"a", "b"}
    assert procs["b"].poll() == 0  # waited for, not abandoned
    assert str(e.value) == "stage(s) failed: a (exit 3); not started: c, d"


def test_an_exception_from_start_is_raised_once_the_running_stages_end():
    fakes = Fakes({"a": 0.3})

    def start(name):
        if name == "b":
            raise InputError("file is empty: no records", path="x.jsonl")
        return fakes.start(name)

    with pytest.raises(InputError, match="file is empty"):
        schedule(["a", "b", "c"], {}, 2, start)
    assert fakes.times["a"][1] is not None and "c" not in fakes.times


# ---------------------------------------------------------------------------- through the pipeline


def test_a_group_of_child_processes_and_a_builtin(tmp_path, capsys):
    o = tmp_path / "o"
    spec = {"out": str(o), "parallel": 2, "stages": [
        {"name": "w1", "command": "world build", "group": "g", "args": {"size": "tiny", "seed": 1}},
        {"name": "w2", "command": "world build", "group": "g", "args": {"size": "tiny", "seed": 2}},
        {"name": "p", "command": "slice", "group": "g",
         "args": {"input": "{w1}/prompts/ppo.jsonl", "n": 3, "out": "{out}/p.jsonl"}}]}
    cfg = write(tmp_path / "p.yaml", spec)
    assert [s.deps for s in load_pipeline(cfg)[1]] == [(), (), ("w1",)]
    run_pipeline(cfg)
    out = capsys.readouterr().out
    assert len((o / "p.jsonl").read_text().splitlines()) == 3 and (o / "w2" / "world.json").exists()
    assert "[w1] " in out and "[w2] " in out
    assert out.index("pipeline: w1: done in") < out.index("pipeline: p: started")
    assert "pipeline: group g: 3 stages done in" in out

    # a failing child: its dependent never starts, the error names it
    spec["out"] = str(tmp_path / "o2")
    spec["stages"][0]["args"]["size"] = "enormous"
    with pytest.raises(InputError, match=r"stage\(s\) failed: w1 \(exit 2\); not started: p"):
        run_pipeline(write(tmp_path / "p.yaml", spec))
    assert "pipeline: p: started" not in capsys.readouterr().out
    assert not (tmp_path / "o2" / "p.jsonl").exists()
