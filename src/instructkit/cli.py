"""`instructkit <command> [--config f.yaml] [key.sub=value | --key value ...]` — a thin shell over
`stage.run(cfg)`. Every config field is a flag; `instructkit <command> --help` lists them all."""
from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

from instructkit import config as C
from instructkit.errors import EXIT_INPUT, AlreadyComplete, InputError
from instructkit.stages.importer import ImportConfig

# command -> (config class, module with run(cfg), positional argument names, one-line summary)
COMMANDS = {
    "pretrain": (C.PretrainConfig, "instructkit.stages.pretrain", [], "pretrain a causal LM on packed text"),
    "sft": (C.SFTConfig, "instructkit.stages.sft", [], "supervised fine-tuning on demonstrations"),
    "sample": (C.SampleConfig, "instructkit.stages.sample", ["model"], "sample completions for a prompts file"),
    "rm": (C.RMConfig, "instructkit.stages.rm", [], "reward model on K-way rankings (pairs and ratings too)"),
    "rm-eval": (C.RMEvalConfig, "instructkit.stages.rm_eval", ["model"], "evaluate a reward model on rankings"),
    "score": (C.ScoreConfig, "instructkit.stages.score", ["model", "input"], "score prompt/completion records with a reward model"),
    "ppo": (C.PPOConfig, "instructkit.stages.ppo", [], "PPO / PPO-ptx against a reward model"),
    "eval": (C.EvalConfig, "instructkit.evaluate.run", [], "win rates with intervals, behaviour rates, alignment tax"),
    "report": (C.ReportConfig, "instructkit.evaluate.report", ["run"], "HTML report + summary.json of a pipeline run"),
    "bon": (C.BoNConfig, "instructkit.stages.bon", ["model"], "best-of-n sampling with a reward model"),
    "dpo": (C.DirectConfig, "instructkit.stages.direct", [], "direct preference optimisation: --loss dpo|cdpo|ipo|slic|kto|orpo"),
    "import": (ImportConfig, "instructkit.stages.importer", ["format"], "convert HH-RLHF, TRL or rating JSONL into contract records"),
}
# flags whose field name differs (a Python keyword cannot be a field): command -> {flag: field}
FLAG_ALIASES = {"import": {"in": "input"}, "score": {"in": "input"}}
# commands with their own argument parsing: name -> (module, summary)
DELEGATED = {
    "world": ("instructkit.sandbox.cli", "the sandbox world: build | label | report"),
    "label": ("instructkit.feedback.cli", "the labeling app: serve | user | project | import | generate | export"),
    "demo": ("instructkit.pipeline:demo_main", "the whole pipeline on the built-in sandbox, with its report"),
    "pipeline": ("instructkit.pipeline", "run a pipeline config's stages in order, resuming and skipping"),
    "serve": ("instructkit.serve.cli", "OpenAI-compatible API + playground: serve MODEL_DIR [--port] [--model NAME=DIR]"),
    "spec": ("instructkit.feedback_ai.cli:spec_main", "behaviour specs: run (pass rates, --baseline gate) | label | agree"),
    "ai-label": ("instructkit.feedback_ai.cli:ai_label_main", "RLAIF: a judge model ranks K responses against principles"),
}


def usage() -> str:
    lines = ["usage: instructkit <command> [--config FILE.yaml] [key=value ...]", "", "commands:"]
    for name, (_, _, pos, summary) in COMMANDS.items():
        lines.append(f"  {name:<10} {summary}")
    for name, (_, summary) in DELEGATED.items():
        lines.append(f"  {name:<10} {summary}")
    lines.append("\n`instructkit <command> --help` lists every field with its doc and default.")
    return "\n".join(lines)


def split_args(argv: list[str], positional: list[str]) -> tuple[str | None, list[str], bool]:
    """-> (config path, overrides as key=value, help requested)."""
    config_path, overrides, want_help = None, [], False
    pos = list(positional)
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            want_help = True
        elif a == "--config" or a.startswith("--config="):
            if "=" in a:
                config_path = a.split("=", 1)[1]
            else:
                if i + 1 >= len(argv):
                    raise InputError("--config needs a file", field="--config")
                config_path = argv[i + 1]
                i += 1
        elif a.startswith("--"):
            key, eq, value = a[2:].partition("=")
            key = key.replace("-", "_")  # in the key only: --data.train=my-file.jsonl keeps its hyphen
            if eq:
                overrides.append(f"{key}={value}")
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                overrides.append(f"{key}={argv[i + 1]}")
                i += 1
            else:
                overrides.append(f"{key}=true")
        elif "=" in a:
            overrides.append(a)
        elif pos:
            overrides.append(f"{pos.pop(0)}={a}")
        else:
            raise InputError(f"unexpected argument {a!r} (use key=value)")
        i += 1
    return config_path, overrides, want_help


def run_command(name: str, argv: list[str]) -> int:
    cls, module, positional, _ = COMMANDS[name]
    config_path, overrides, want_help = split_args(argv, positional)
    aliases = FLAG_ALIASES.get(name, {})
    for i, text in enumerate(overrides):
        key, _, value = text.partition("=")
        if key in aliases:
            overrides[i] = f"{aliases[key]}={value}"
    if want_help:
        print(f"usage: instructkit {name} {' '.join(p.upper() for p in positional)} [--config FILE.yaml] [key=value ...]\n")
        print(C.help_text(cls))
        return 0
    cfg = C.load_config(cls, config_path, overrides)
    out = Path(cfg.out) if getattr(cfg, "out", "") else None
    created = _first_missing(out) if out else None  # what this run creates, parents included
    try:
        importlib.import_module(module).run(cfg)
    except InputError:
        if created is not None and created.is_dir():
            shutil.rmtree(created, ignore_errors=True)  # nothing half-written
        raise
    return 0


def _first_missing(path: Path) -> Path | None:
    """The outermost of `path` and its parents that does not exist yet (None if `path` exists)."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
    return missing


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    try:
        if name in COMMANDS:
            return run_command(name, rest)
        if name in DELEGATED:
            module, _, func = DELEGATED[name][0].partition(":")
            return int(getattr(importlib.import_module(module), func or "main")(rest) or 0)
        raise InputError(f"unknown command {name!r}\n\n{usage()}")
    except InputError as e:
        print(f"instructkit: error: {e.format()}", file=sys.stderr)
        return EXIT_INPUT
    except AlreadyComplete as e:
        print(f"instructkit {name}: {e} is already complete (pass overwrite=true to redo it)")
        return 0
    except KeyboardInterrupt:
        print("instructkit: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
