"""`instructkit pipeline CONFIG`: stages run in order, each skipped when its output is complete.

A pipeline file names an output root and a list of stages; each stage is any instructkit command
with its arguments. String values may use `{out}` (the root) and `{name}` for any earlier stage's
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
    raw.update(overrides or {})
    names = {"out": str(raw["out"]), **{k: str(v) for k, v in (raw.get("vars") or {}).items()}}
    names = {k: v.format(**names) if k != "out" else v for k, v in names.items()}
    stages = []
    for i, s in enumerate(raw["stages"]):
        where = f"stages[{i}]"
        if not isinstance(s, dict) or "name" not in s or "command" not in s:
            raise InputError("each stage needs `name` and `command`", path=str(p), field=where)
        args = _format(s.get("args") or {}, names, f"{where}.args")
        out = args.get("out") or f"{names['out']}/{s['name']}"
        args["out"] = out
        names[s["name"]] = out
        stages.append(Stage(s["name"], s["command"], args, out))
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
            argv += [f"--{k}", ",".join(map(str, v)) if isinstance(v, list) else str(v)]
        rc = importlib.import_module(cli.DELEGATED[words[0]][0]).main(argv)
        if rc:
            raise InputError(f"stage {stage.name!r} ({stage.command}) failed with exit code {rc}")
    else:
        raise InputError(f"unknown command {stage.command!r}", field=f"stages.{stage.name}")


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
    for s in stages:
        if only and s.name not in only:
            continue
        if stage_complete(s):
            print(f"pipeline: {s.name}: complete, skipped ({s.out})")
            continue
        print(f"pipeline: {s.name}: {s.command} -> {s.out}")
        t0 = time.time()
        run_stage(s)
        print(f"pipeline: {s.name}: done in {time.time() - t0:.0f}s")
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
