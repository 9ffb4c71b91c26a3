"""`instructkit serve MODEL_DIR [--port 8000] [--host 127.0.0.1] [--name NAME] [--model NAME=DIR ...]`

Flags are the fields of `ServeConfig` (`--help` lists them with their docs); `--config FILE.yaml`
sets them from YAML first. `--model NAME=DIR` repeats, to serve several models side by side."""
from __future__ import annotations

import argparse
import dataclasses

from instructkit.serve.config import ServeConfig


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="instructkit serve", description=ServeConfig.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", nargs="?", default=None, help="model directory to serve (named after its directory)")
    p.add_argument("--config", default=None, help="YAML file with any of the fields below")
    for f in dataclasses.fields(ServeConfig):
        if f.name == "model":
            continue
        flag = "--model" if f.name == "models" else "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        kw = dict(dest=f.name, default=None, help=f"{f.metadata['doc']} (default: {default!r})")
        if f.name == "models":
            p.add_argument(flag, action="append", metavar="NAME=DIR", **kw)
        else:
            p.add_argument(flag, type=type(default), **kw)
    return p


def config_from_args(argv: list[str]) -> ServeConfig:
    from instructkit import config as C

    args = parser().parse_args(argv)
    cfg = C.load_config(ServeConfig, args.config) if args.config else ServeConfig()
    for f in dataclasses.fields(ServeConfig):
        value = getattr(args, f.name, None)
        if f.name == "models" and value:
            value = list(cfg.models) + value
        if value is not None:
            setattr(cfg, f.name, value)
    if args.model_dir:
        cfg.model = args.model_dir
    return cfg


def main(argv: list[str]) -> int:
    from instructkit.models import set_threads
    from instructkit.serve.server import serve

    cfg = config_from_args(argv)
    set_threads(cfg.threads)
    serve(cfg)
    return 0
