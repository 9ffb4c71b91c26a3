"""`instructkit pipeline CONFIG`: stages run in order, each skipped when its output is complete.

A pipeline file names an output root and a list of stages; each stage is any instructkit command
with its arguments (its `out` defaults to ROOT/NAME; `output:` names the result of a command that
writes elsewhere, for the completeness check; stages sharing a `group` run side by side). String values may use `{out}` (the root) and `{name}` for any earlier stage's
output (e.g. `model: "{sft}"`). Nothing passes between stages in memory: every arrow is a path."""
from __future__ import annotations

import importlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from instructkit.errors import InputError
from instructkit.run import is_complete


@dataclass
class Stage:
    name: str
    command: str  # e.g. "sft" or "world build"
    args: dict
    out: str
    group: str | None = None  # consecutive stages of one group run at the same time, one process each


def _format(value, names: dict, where: str):
    if isinstance(value, str):
        try:
            return value.format(**names)
        except KeyError as e:
            raise InputError(f"unknown reference {{{e.args[0]}}} (known: {', '.join(sorted(names))})",
                             field=where) from None
    if isinstance(value, dict):
        return {k: _format(v, names, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_format(v, names, where) for v in value]
    return value


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_pipeline(path: str, overrides: dict | None = None) -> tuple[str, list[Stage]]:
    p = Path(path)
    if not p.is_file():
        raise InputError("pipeline config does not exist" if not p.exists() else "expected a file", path=str(p))
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise InputError(f"malformed YAML: {getattr(e, 'problem', e)}", path=str(p),
                         line=mark.line + 1 if mark else None) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("stages"), list) or not raw.get("out"):
        raise InputError("expected a mapping with `out` and a list of `stages`", path=str(p))
    overrides = dict(overrides or {})
    raw["vars"] = {**(raw.get("vars") or {}), **overrides.pop("vars", {})}
    stage_args = overrides.pop("stage_args", {})  # {stage name: {arg: value}}, merged into that stage's args
    raw.update(overrides)
    names = {"out": str(raw["out"]), **{k: str(v) for k, v in (raw.get("vars") or {}).items()}}
    names = {k: v.format(**names) if k != "out" else v for k, v in names.items()}
    stages = []
    for i, s in enumerate(raw["stages"]):
        where = f"stages[{i}]"
        if not isinstance(s, dict) or "name" not in s or "command" not in s:
            raise InputError("each stage needs `name` and `command`", path=str(p), field=where)
        args = _format(_deep_merge(s.get("args") or {}, stage_args.get(s["name"], {})), names, f"{where}.args")
        if "output" in s:  # a command whose result is not written to `out` (e.g. world report --json F)
            out = _format(str(s["output"]), names, f"{where}.output")
        else:
            out = args.get("out") or f"{names['out']}/{s['name']}"
            args["out"] = out
        names[s["name"]] = out
        stages.append(Stage(s["name"], s["command"], args, out, s.get("group")))
    return names["out"], stages


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


def run_stage(stage: Stage) -> None:
    from instructkit import cli
    from instructkit.config import load_config

    words = stage.command.split()
    if words[0] in cli.COMMANDS:
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


def run_parallel(batch: list[Stage], root: Path) -> None:
    """Run stages as child processes (`python -m instructkit CMD --config ARGS.yaml`), one torch
    thread each, their output prefixed with the stage name; fail if any fails."""
    import os
    import subprocess
    import sys
    import threading

    spec_dir = root / ".pipeline"
    spec_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for s in batch:
        words = s.command.split()
        env = {**os.environ, "INSTRUCTKIT_QUIET": "1", "OMP_NUM_THREADS": "1"}
        if words[0] in __import__("instructkit.cli").cli.COMMANDS:
            spec = spec_dir / f"{s.name}.yaml"
            spec.write_text(yaml.safe_dump({**s.args, "threads": 1}))
            argv = [sys.executable, "-m", "instructkit", words[0], "--config", str(spec)]
        else:
            argv = [sys.executable, "-m", "instructkit", *words]
            for k, v in _flatten(s.args):
                argv += [f"--{k.replace('_', '-')}", ",".join(map(str, v)) if isinstance(v, list) else str(v)]
        procs.append((s, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          env=env)))

    def pump(name, stream):
        for line in stream:
            print(f"[{name}] {line}", end="", flush=True)
    threads = [threading.Thread(target=pump, args=(s.name, p.stdout), daemon=True) for s, p in procs]
    for t in threads:
        t.start()
    failed = [(s.name, p.wait()) for s, p in procs]
    for t in threads:
        t.join()
    failed = [(n, rc) for n, rc in failed if rc]
    if failed:
        raise InputError("stage(s) failed: " + ", ".join(f"{n} (exit {rc})" for n, rc in failed))


def run_pipeline(path: str, from_stage: str | None = None, only: list[str] | None = None,
                 overrides: dict | None = None) -> str:
    root, stages = load_pipeline(path, overrides)
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
            run_stage(s)
        else:
            print(f"pipeline: {', '.join(b.name for b in batch)}: running side by side (one process each)")
            run_parallel(batch, Path(root))
        print(f"pipeline: {', '.join(b.name for b in batch)}: done in {time.time() - t0:.0f}s")
        i += len(batch)
    print(f"pipeline: all stages complete in {time.time() - t_all:.0f}s -> {root}")
    return root


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="instructkit pipeline", description=__doc__)
    ap.add_argument("config", help="pipeline YAML (e.g. configs/demo.yaml)")
    ap.add_argument("--from", dest="from_stage", help="rerun from this stage (its output and later ones are redone)")
    ap.add_argument("--only", help="comma-separated stage names to run")
    ap.add_argument("--out", help="override the output root")
    a = ap.parse_args(argv)
    run_pipeline(a.config, a.from_stage, a.only.split(",") if a.only else None,
                 {"out": a.out} if a.out else None)
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
