"""`instructkit pipeline CONFIG`: stages run in order, each skipped when its output is complete.

A pipeline file names an output root and a list of stages; each stage is any instructkit command
with its arguments (its `out` defaults to ROOT/NAME; `output:` names the result of a command that
writes elsewhere, for the completeness check). String values may use `{out}` (the root) and `{name}`
for any earlier stage's output (e.g. `model: "{sft}"`). Nothing passes between stages in memory:
every arrow is a path.

Dependencies (`Stage.deps`, found when the file loads): a stage depends on each earlier stage whose
output one of its args names, as a path component of any string at any depth (`{sft}`, `{sft}/x`,
`sft={sft}`, `{sft}@0.3`, `sandbox:{world}`, or a directory holding it: `run: {out}` depends on
every earlier stage), plus those listed in `needs: [NAME, ...]` (earlier stages only). Stages run in
file order; consecutive stages sharing a `group` form a pool: each starts, as a child process with
one torch thread, as soon as its deps in the pool are done, the earliest in file order first, at
most `parallel` (a top-level key, default the CPU count; `--parallel N`) at once. After a failure
nothing new starts; the running ones finish, then the pipeline fails naming the failed stages.

`extends: BASE.yaml` (relative to the file) builds on another pipeline file, loaded first (itself
possibly extending another; a cycle is an error): this file's `out` and `rounds` replace the base's,
its `vars` are merged into the base's (its own win), and each of its stages either replaces the
base stage of the same `name` in place (its other keys replace the base's, its `args` are
deep-merged: a mapping key by key, so one arg can change; a list or scalar replaced whole) or is
new: appended, or placed with `after: NAME` / `before: NAME` (past a group it is not part of).

Iterated RLHF (`rounds:`, a top-level block) is expanded into ordinary stages before anything
runs: see instructkit/rounds.py."""
from __future__ import annotations

import copy
import importlib
import os
import queue
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from instructkit.config_io import deep_merge
from instructkit.errors import InputError
from instructkit.rounds import __doc__ as rounds_doc
from instructkit.rounds import check_rounds, expand_rounds, slice_lines
from instructkit.run import is_complete


@dataclass
class Stage:
    name: str
    command: str  # e.g. "sft" or "world build"
    args: dict
    out: str
    group: str | None = None  # consecutive stages of one group form a pool: one process each, scheduled by deps
    deps: tuple[str, ...] = ()  # earlier stages whose outputs this one reads, and those it `needs`


@dataclass
class Pipeline:
    root: str  # the output root
    stages: list[Stage]
    parallel: int  # at most this many stages of a group run at once


def _format(value, names: dict, where: str, path: str | None = None):
    if isinstance(value, str):
        try:
            return value.format(**names)
        except KeyError as e:
            raise InputError(f"unknown reference {{{e.args[0]}}} (known: {', '.join(sorted(names))})",
                             path=path, field=where) from None
    if isinstance(value, dict):
        return {k: _format(v, names, f"{where}.{k}", path) for k, v in value.items()}
    if isinstance(value, list):
        return [_format(v, names, where, path) for v in value]
    return value


def _parse(p: Path) -> dict:
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise InputError(f"malformed YAML: {getattr(e, 'problem', e)}", path=str(p),
                         line=mark.line + 1 if mark else None) from None
    if not isinstance(raw, dict):
        raise InputError("expected a mapping with `out` and a list of `stages`", path=str(p))
    return raw


def _resolve(p: Path, chain: tuple[Path, ...] = ()) -> tuple[dict, list[tuple[str, int]], str]:
    """One pipeline file with its `extends` chain applied -> (the mapping, for each stage the file and
    index it was last written at, for error messages; the file `rounds` comes from)."""
    raw = _parse(p)
    ext = raw.pop("extends", None)
    if ext is None:
        if not isinstance(raw.get("stages"), list) or not raw.get("out"):
            raise InputError("expected a mapping with `out` and a list of `stages`", path=str(p))
        for i, s in enumerate(raw["stages"]):
            if not isinstance(s, dict) or "name" not in s or "command" not in s:
                raise InputError("each stage needs `name` and `command`", path=str(p), field=f"stages[{i}]")
            for key in ("after", "before"):
                if key in s:
                    raise InputError(f"`{key}` places a new stage among the stages of the file named by "
                                     "`extends`; this file has none", path=str(p), field=f"stages[{i}].{key}")
        return raw, [(str(p), i) for i in range(len(raw["stages"]))], str(p)

    if not isinstance(ext, str) or not ext.strip():
        raise InputError(f"expected the path of the pipeline file to build on (relative to this one), got {ext!r}",
                         path=str(p), field="extends")
    base = p.parent / ext
    seen = [*chain, p]
    if any(base.resolve() == q.resolve() for q in seen):
        raise InputError(f"cycle: {' -> '.join(map(str, [*seen, base]))}", path=str(p), field="extends")
    if not base.is_file():
        raise InputError(f"{base}: " + ("pipeline config does not exist" if not base.exists() else "expected a file"),
                         path=str(p), field="extends")
    merged, origins, rounds_path = _resolve(base, tuple(seen))
    if not isinstance(raw.get("stages") or [], list):
        raise InputError("expected a list of stages (added to, or replacing by name, the base's)", path=str(p),
                         field="stages")
    if not isinstance(raw.get("vars") or {}, dict):
        raise InputError("expected a mapping of names", path=str(p), field="vars")
    for key, value in raw.items():
        if key == "vars":  # merged: this file's win
            merged["vars"] = {**(merged.get("vars") or {}), **(value or {})}
        elif key != "stages":  # out, rounds, ...: this file's replace the base's (`rounds: null` drops them)
            merged[key] = value
    if "rounds" in raw:
        rounds_path = str(p)
    if not merged.get("out"):
        raise InputError("expected an output root", path=str(p), field="out")
    stages = list(merged["stages"])
    for i, s in enumerate(raw.get("stages") or []):
        where = f"stages[{i}]"
        if not isinstance(s, dict) or "name" not in s:
            raise InputError("each stage needs `name` and `command`", path=str(p), field=where)
        index = {st["name"]: j for j, st in enumerate(stages)}
        place = [k for k in ("after", "before") if k in s]
        if s["name"] in index:  # replaces the base's stage in place; its args are deep-merged
            if place:
                raise InputError(f"stage {s['name']!r} replaces the base's in place; `{place[0]}` only places a "
                                 "new stage", path=str(p), field=f"{where}.{place[0]}")
            if not isinstance(s.get("args") or {}, dict):
                raise InputError("expected a mapping", path=str(p), field=f"{where}.args")
            j = index[s["name"]]
            old = stages[j]
            stages[j] = {**old, **{k: v for k, v in s.items() if k != "args"},
                         "args": deep_merge(copy.deepcopy(old.get("args") or {}), copy.deepcopy(s.get("args") or {}))}
            origins[j] = (str(p), i)
            continue
        if "command" not in s:
            raise InputError(f"each stage needs `name` and `command` (the base has no stage {s['name']!r} to "
                             f"replace; stages: {', '.join(index)})", path=str(p), field=where)
        if len(place) > 1:
            raise InputError("give `after` or `before`, not both", path=str(p), field=where)
        s = dict(s)
        j = len(stages)  # appended
        if place:
            target = s.pop(place[0])
            if not isinstance(target, str) or target not in index:
                raise InputError(f"no stage {target!r} (stages: {', '.join(index)})", path=str(p),
                                 field=f"{where}.{place[0]}")
            j = index[target]
            group = stages[j].get("group")
            if place[0] == "after":
                j += 1
                while group and group != s.get("group") and j < len(stages) and stages[j].get("group") == group:
                    j += 1  # never split a group of side-by-side stages the new one is not part of
            else:
                while group and group != s.get("group") and j > 0 and stages[j - 1].get("group") == group:
                    j -= 1
        stages.insert(j, s)
        origins.insert(j, (str(p), i))
    merged["stages"] = stages
    return merged, origins, rounds_path


def load_pipeline(path: str, overrides: dict | None = None) -> tuple[str, list[Stage]]:
    pipe = read_pipeline(path, overrides)
    return pipe.root, pipe.stages


def read_pipeline(path: str, overrides: dict | None = None) -> Pipeline:
    p = Path(path)
    if not p.is_file():
        raise InputError("pipeline config does not exist" if not p.exists() else "expected a file", path=str(p))
    raw, origins, rounds_path = _resolve(p)
    overrides = dict(overrides or {})
    raw["vars"] = {**(raw.get("vars") or {}), **overrides.pop("vars", {})}
    stage_args = overrides.pop("stage_args", {})  # {stage name: {arg: value}}, merged into that stage's args
    raw.update(overrides)
    parallel = (os.cpu_count() or 1) if raw.get("parallel") is None else raw["parallel"]
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise InputError(f"expected an integer >= 1 (stages of a group running at once), got {parallel!r}",
                         path=str(p), field="parallel")
    names = {"out": str(raw["out"]), **{k: str(v) for k, v in (raw.get("vars") or {}).items()}}
    names = {k: _format(v, names, f"vars.{k}", str(p)) if k != "out" else v for k, v in names.items()}
    rounds, insert_after = check_rounds(raw.get("rounds"), raw["stages"], rounds_path)
    stages, needs = [], {}
    for i, s in enumerate(raw["stages"]):
        src, where = origins[i][0], f"stages[{origins[i][1]}]"
        if "needs" in s:
            needs[s["name"]] = (s["needs"], src)
        args = _format(deep_merge(s.get("args") or {}, stage_args.get(s["name"], {})), names, f"{where}.args", src)
        if "output" in s:  # a command whose result is not written to `out` (e.g. world report --json F)
            out = _format(str(s["output"]), names, f"{where}.output", src)
        else:
            out = args.get("out") or f"{names['out']}/{s['name']}"
            args["out"] = out
        names[s["name"]] = out
        stages.append(Stage(s["name"], s["command"], args, out, s.get("group")))
        if i == insert_after:
            stages += expand_rounds(rounds, {st.name: st for st in stages}, names, stage_args, rounds_path)
    for j, s in enumerate(stages):
        s.deps = _deps(s, stages[:j], *needs.get(s.name, ([], None)))
    return Pipeline(names["out"], stages, parallel)


# ---------------------------------------------------------------------------- dependencies

_SEPARATORS = re.compile(r"[\s,;=:@]+")  # a,b lists, name=path, sandbox:path, path@temperature


def _paths(value) -> list[str]:
    """Every token of every string in `value` (nested dicts and lists), as a normalised path."""
    if isinstance(value, str):
        return [os.path.normpath(t) for t in _SEPARATORS.split(value) if t]
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in _paths(v)]
    return []


def _deps(stage: Stage, earlier: list[Stage], needs, path: str | None) -> tuple[str, ...]:
    """The earlier stages `stage` reads from: an arg names the output, a path inside it or a
    directory holding it; plus its `needs`."""
    own = os.path.normpath(stage.out)  # where the stage writes is not one of its inputs
    paths = [p for p in _paths({k: v for k, v in stage.args.items() if k != "out"})
             if p != own and not p.startswith(own + os.sep)]
    deps = []
    for a in earlier:
        out = os.path.normpath(a.out)
        if any(p == out or p.startswith(out + os.sep) or out.startswith(p + os.sep) for p in paths):
            deps.append(a.name)
    known = [a.name for a in earlier]
    if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
        raise InputError(f"expected a list of earlier stage names, got {needs!r}", path=path,
                         field=f"stages.{stage.name}.needs")
    for n in needs:
        if n not in known:
            raise InputError(f"no earlier stage {n!r} (a stage needs only stages before it: {', '.join(known)})",
                             path=path, field=f"stages.{stage.name}.needs")
        if n not in deps:
            deps.append(n)
    return tuple(sorted(deps, key=known.index))


# ---------------------------------------------------------------------------- iterated rounds

BUILTINS = {"slice": slice_lines}  # pipeline-only commands, run in the pipeline's own process


def stage_complete(stage: Stage) -> bool:
    out = Path(stage.out)
    if out.is_file():
        return True
    return out.is_dir() and (is_complete(out) or (out / "world.json").exists())


def _flatten(args: dict, prefix: str = "") -> list[str]:
    items = []
    for k, v in args.items():
        if isinstance(v, dict):
            items.extend(_flatten(v, f"{prefix}{k}."))
        else:
            items.append((f"{prefix}{k}", v))
    return items


def solo_threads() -> int:
    """Torch threads for a stage that runs alone: every core (an idle 2-core machine pretrains 1.6x
    faster on 2 threads than on 1), unless INSTRUCTKIT_SOLO_THREADS says otherwise. Stages of a
    `group` run one thread each: there, threads would fight over the cores (OpenMP contention)."""
    import os

    return int(os.environ.get("INSTRUCTKIT_SOLO_THREADS", "0") or 0) or (os.cpu_count() or 1)


def run_stage(stage: Stage, threads: int = 0) -> None:
    """Run one stage in this process; threads > 0 sets torch's thread count for it (a `threads`
    the stage's own args give wins)."""
    import os

    saved = os.environ.get("OMP_NUM_THREADS")
    if threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # read by set_threads(0) in every command
    try:
        _run_stage(stage)
    finally:
        if threads > 0:
            if saved is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = saved


def _run_stage(stage: Stage) -> None:
    from instructkit import cli
    from instructkit.config import load_config

    words = stage.command.split()
    if stage.command in BUILTINS:
        BUILTINS[stage.command](stage.args)
    elif words[0] in cli.COMMANDS:
        cls, module, _, _ = cli.COMMANDS[words[0]]
        cfg = load_config(cls, values=stage.args)
        importlib.import_module(module).run(cfg)
    elif words[0] in cli.DELEGATED:
        argv = words[1:]
        for k, v in _flatten(stage.args):
            argv += [f"--{k.replace('_', '-')}", ",".join(map(str, v)) if isinstance(v, list) else str(v)]
        rc = importlib.import_module(cli.DELEGATED[words[0]][0]).main(argv)
        if rc:
            raise InputError(f"stage {stage.name!r} ({stage.command}) failed with exit code {rc}")
    else:
        raise InputError(f"unknown command {stage.command!r}", field=f"stages.{stage.name}")


def schedule(names: list[str], deps: dict[str, tuple[str, ...]], parallel: int,
             start: Callable[[str], Callable[[], int]]) -> None:
    """Run a pool of stages (`names`, in file order): each starts once its deps among `names` have
    ended well (deps outside the pool are done already), the earliest ready one first, at most
    `parallel` at once. `start(name)` begins a stage and returns a function that blocks until it
    ends and returns its exit code (e.g. a Popen's `wait`). After a failure nothing new starts;
    once the running ones have ended, an InputError names the failed stages (an exception raised
    by `start` or a wait is re-raised instead)."""
    pool = set(names)
    pending, running, done, failed = list(names), set(), set(), []
    ended: queue.Queue = queue.Queue()
    error: BaseException | None = None

    def wait_for(name: str, wait: Callable[[], int]) -> None:
        try:
            ended.put((name, wait()))
        except BaseException as e:  # noqa: BLE001 -- handed to the main thread, re-raised there
            ended.put((name, e))

    while True:
        while not failed and error is None and len(running) < parallel:
            ready = [n for n in pending if all(d in done or d not in pool for d in deps.get(n, ()))]
            if not ready:
                break
            pending.remove(ready[0])
            try:
                wait = start(ready[0])
            except BaseException as e:  # noqa: BLE001 -- re-raised once the running stages have ended
                error = e
                break
            running.add(ready[0])
            threading.Thread(target=wait_for, args=(ready[0], wait), daemon=True).start()
        if not running:
            break
        name, rc = ended.get()
        running.remove(name)
        if isinstance(rc, BaseException):
            error = error or rc
        elif rc:
            failed.append((name, rc))
        else:
            done.add(name)
    if error is not None:
        raise error
    if failed:
        raise InputError("stage(s) failed: " + ", ".join(f"{n} (exit {rc})" for n, rc in failed)
                         + (f"; not started: {', '.join(pending)}" if pending else ""))


def _child_argv(s: Stage, spec_dir: Path) -> list[str]:
    """`python -m instructkit CMD --config ARGS.yaml` (one torch thread), or a delegated command with
    its args as flags."""
    import sys

    words = s.command.split()
    if words[0] in __import__("instructkit.cli").cli.COMMANDS:
        spec = spec_dir / f"{s.name.replace('/', '__')}.yaml"  # round_2/rm -> round_2__rm.yaml
        spec.write_text(yaml.safe_dump({**s.args, "threads": 1}))
        return [sys.executable, "-m", "instructkit", words[0], "--config", str(spec)]
    argv = [sys.executable, "-m", "instructkit", *words]
    for k, v in _flatten(s.args):
        argv += [f"--{k.replace('_', '-')}", ",".join(map(str, v)) if isinstance(v, list) else str(v)]
    return argv


def run_group(pool: list[Stage], root: Path, parallel: int) -> None:
    """Run the stages of one group by `schedule`: each a child process with one torch thread (threads
    would fight over the cores), its output prefixed with the stage name; a builtin command runs in
    this process (quick, and not a command a child process knows). Fail if any fails."""
    import subprocess

    spec_dir = root / ".pipeline"
    spec_dir.mkdir(parents=True, exist_ok=True)
    by_name = {s.name: s for s in pool}

    def start(name: str) -> Callable[[], int]:
        s, t0 = by_name[name], time.time()
        print(f"pipeline: {name}: started", flush=True)
        if s.command in BUILTINS:
            run_stage(s)
            print(f"pipeline: {name}: done in {time.time() - t0:.0f}s", flush=True)
            return lambda: 0
        env = {**os.environ, "INSTRUCTKIT_QUIET": "1", "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(_child_argv(s, spec_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env)

        def pump():
            for line in proc.stdout:
                print(f"[{name}] {line}", end="", flush=True)
        printer = threading.Thread(target=pump, daemon=True)
        printer.start()

        def wait() -> int:
            rc = proc.wait()
            printer.join()
            print(f"pipeline: {name}: " + (f"failed (exit {rc})" if rc else "done") + f" in {time.time() - t0:.0f}s",
                  flush=True)
            return rc
        return wait

    schedule([s.name for s in pool], {s.name: s.deps for s in pool}, parallel, start)


def run_pipeline(path: str, from_stage: str | None = None, only: list[str] | None = None,
                 overrides: dict | None = None) -> str:
    pipe = read_pipeline(path, overrides)
    root, stages = pipe.root, pipe.stages
    names = [s.name for s in stages]
    if from_stage and from_stage not in names:
        raise InputError(f"no stage {from_stage!r} (stages: {', '.join(names)})", field="--from")
    if from_stage:
        for s in stages[names.index(from_stage):]:
            target = Path(s.out)
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    t_all = time.time()
    todo = []
    for s in stages:
        if only and s.name not in only:
            continue
        if stage_complete(s):
            print(f"pipeline: {s.name}: complete, skipped ({s.out})")
            continue
        todo.append(s)
    i = 0
    while i < len(todo):
        s = todo[i]
        batch = [s]
        while s.group and i + len(batch) < len(todo) and todo[i + len(batch)].group == s.group:
            batch.append(todo[i + len(batch)])
        t0 = time.time()
        if len(batch) == 1:
            print(f"pipeline: {s.name}: {s.command} -> {s.out}")
            run_stage(s, solo_threads())
            print(f"pipeline: {s.name}: done in {time.time() - t0:.0f}s")
        else:
            print(f"pipeline: group {s.group}: {', '.join(b.name for b in batch)}, each as soon as the stages it "
                  f"reads from are done, at most {pipe.parallel} at once (one process each)")
            run_group(batch, Path(root), pipe.parallel)
            print(f"pipeline: group {s.group}: {len(batch)} stages done in {time.time() - t0:.0f}s")
        i += len(batch)
    print(f"pipeline: all stages complete in {time.time() - t_all:.0f}s -> {root}")
    return root


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="instructkit pipeline", description=__doc__ + "\n\n" + rounds_doc)
    ap.add_argument("config", help="pipeline YAML (e.g. configs/demo.yaml)")
    ap.add_argument("--from", dest="from_stage", help="rerun from this stage (its output and later ones are redone)")
    ap.add_argument("--only", help="comma-separated stage names to run")
    ap.add_argument("--out", help="override the output root")
    ap.add_argument("--parallel", type=int, help="at most this many stages of a group at once (default: the "
                                                   "config's `parallel`, else the CPU count)")
    a = ap.parse_args(argv)
    overrides = {k: v for k, v in (("out", a.out), ("parallel", a.parallel)) if v is not None}
    run_pipeline(a.config, a.from_stage, a.only.split(",") if a.only else None, overrides or None)
    return 0


def default_demo_config() -> Path:
    """configs/demo.yaml of the source tree (the package is installed editable by the Makefile)."""
    return Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def demo_main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="instructkit demo",
                                 description="The whole pipeline on the built-in sandbox (configs/demo.yaml): "
                                             "world -> pretrain -> SFT -> labels -> RM -> PPO / PPO-ptx -> "
                                             "best-of-n -> evaluation -> report.")
    ap.add_argument("--config", default=str(default_demo_config()))
    ap.add_argument("--out", help="output root (default: the config's, runs/demo)")
    ap.add_argument("--from", dest="from_stage", help="rerun from this stage")
    a = ap.parse_args(argv)
    root = run_pipeline(a.config, a.from_stage, None, {"out": a.out} if a.out else None)
    print(f"demo: outputs in {root}/ — report: {root}/report.html, figures: {root}/summary.json")
    return 0
