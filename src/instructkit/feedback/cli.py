"""`instructkit label <command>`: the labeling app from the command line.

  instructkit label serve [--db sqlite:///labels.db | postgresql://...] [--host 127.0.0.1] [--port 8000]
  instructkit label migrate [--db URL]                     upgrade the schema (serve does this too)
  instructkit label user add NAME [--role labeler|admin] [--password P]   (or $INSTRUCTKIT_PASSWORD, or a prompt)
  instructkit label token NAME                             a new API token for NAME (printed once)
  instructkit label project create NAME [--overlap N] [--k 4..9] [--flags a,b] [--instructions TEXT]
  instructkit label project list
  instructkit label import-prompts FILE --project P [--demonstrations]
  instructkit label import-outputs FILE --project P
  instructkit label generate --project P --models DIR[,DIR] [--k 4..9] [--temperatures 1.0] [--max-new-tokens 48]
  instructkit label tasks --project P --kind ranking|demonstration|comparison [--models A,B]
  instructkit label export --project P --kind rankings|demonstrations|comparisons --out FILE
  instructkit label quality --project P [--json FILE]
  instructkit label simulate --url URL --project P --world DIR --tokens FILE [--pool train]
  instructkit label bench [--db URL] [--labelers 20] [--labels 200]

Every command takes --db (default $INSTRUCTKIT_LABEL_DB, else sqlite:///labels.db)."""
from __future__ import annotations

import argparse
import getpass
import json
import os
import sys

from instructkit.errors import InputError

DEFAULT_DB = os.environ.get("INSTRUCTKIT_LABEL_DB", "sqlite:///labels.db")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # a bad flag is an input error (exit 2, one line), not a usage dump
        raise InputError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="instructkit label", description="the labeling app: demonstrations, K-way rankings, comparisons")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    def cmd(name, help_text):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--db", default=DEFAULT_DB, help="sqlite:///FILE (default sqlite:///labels.db) or postgresql://...")
        return p

    s = cmd("serve", "run the web app (pages and the JSON API)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--secure-cookies", action="store_true", help="mark cookies Secure (behind HTTPS)")
    m = cmd("migrate", "upgrade the database schema to the newest revision")
    m.add_argument("--revision", default="head")
    u = cmd("user", "accounts: user add NAME")
    u.add_argument("action", choices=["add", "password"])
    u.add_argument("name")
    u.add_argument("--role", default="labeler", choices=["labeler", "admin"])
    u.add_argument("--password", default=None, help="default: $INSTRUCTKIT_PASSWORD, else asked for")
    t = cmd("token", "print a new API token for a user")
    t.add_argument("name")
    t.add_argument("--label", default="cli", help="what the token is for")
    p = cmd("project", "project create NAME | project list")
    p.add_argument("action", choices=["create", "list"])
    p.add_argument("name", nargs="?")
    p.add_argument("--overlap", type=int, default=None, help="labelers per task")
    p.add_argument("--k", default=None, help="outputs per ranking task, e.g. 4..9")
    p.add_argument("--flags", default=None, help="comma-separated flag names (default: InstructGPT Table 3)")
    p.add_argument("--instructions", default=None)
    ip = cmd("import-prompts", "import {\"prompt\"} records")
    ip.add_argument("file")
    ip.add_argument("--project", required=True)
    ip.add_argument("--demonstrations", action="store_true", help="also make a demonstration task per prompt")
    io_ = cmd("import-outputs", "import model outputs (K-way groups become ranking tasks)")
    io_.add_argument("file")
    io_.add_argument("--project", required=True)
    g = cmd("generate", "sample K outputs per prompt from model directories and make ranking tasks")
    g.add_argument("--project", required=True)
    g.add_argument("--models", required=True, help="comma-separated model directories")
    g.add_argument("--k", default=None, help="outputs per prompt, e.g. 4..9 (default: the project's range)")
    g.add_argument("--temperatures", default="1.0")
    g.add_argument("--max-new-tokens", type=int, default=48)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--seed", type=int, default=0)
    tk = cmd("tasks", "make the missing tasks of a kind")
    tk.add_argument("--project", required=True)
    tk.add_argument("--kind", required=True, choices=["ranking", "demonstration", "comparison"])
    tk.add_argument("--models", default=None, help="comparison: MODEL_A,MODEL_B (model names as stored)")
    e = cmd("export", "write labels as contract records (JSONL)")
    e.add_argument("--project", required=True)
    e.add_argument("--kind", default="rankings", choices=["rankings", "demonstrations", "comparisons"])
    e.add_argument("--out", required=True)
    e.add_argument("--include-rejected", action="store_true")
    q = cmd("quality", "agreement, Krippendorff's alpha and gold accuracy of a project")
    q.add_argument("--project", required=True)
    q.add_argument("--json", default="", help="also write the figures to this file")
    sim = sub.add_parser("simulate", help="the sandbox's simulated labelers label through the HTTP API")
    sim.add_argument("--url", required=True, help="the app, e.g. http://127.0.0.1:8000")
    sim.add_argument("--project", required=True)
    sim.add_argument("--world", required=True, help="sandbox world directory")
    sim.add_argument("--tokens", required=True, help="file with one API token per line (one simulated labeler each)")
    sim.add_argument("--pool", default="train", help="train | heldout")
    sim.add_argument("--limit", type=int, default=0, help="labels per labeler (0 = until the queue is empty)")
    sim.add_argument("--seed", type=int, default=0)
    b = cmd("bench", "load test: N concurrent API labelers submit M labels each; prints submissions/s")
    b.add_argument("--labelers", type=int, default=20)
    b.add_argument("--labels", type=int, default=200)
    b.set_defaults(db=None)  # a throw-away SQLite file unless --db is given
    return ap


def _sessions(url: str):
    from instructkit.feedback import db as D

    engine = D.make_engine(url)
    D.upgrade(engine)
    return D.session_factory(engine)


def _records(path: str) -> list[tuple[dict, str, int]]:
    from instructkit.data.jsonl import iter_json_lines

    return [(obj, path, line) for line, obj in iter_json_lines(path)]


def _password(given: str | None) -> str:
    if given:
        return given
    if os.environ.get("INSTRUCTKIT_PASSWORD"):
        return os.environ["INSTRUCTKIT_PASSWORD"]
    if not sys.stdin.isatty():
        raise InputError("give --password or $INSTRUCTKIT_PASSWORD (no terminal to ask on)", field="--password")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise InputError("the passwords differ", field="--password")
    return first


def run(args) -> int:
    from sqlalchemy import select

    from instructkit.feedback import security as S
    from instructkit.feedback import service as svc
    from instructkit.feedback.db import Project, User

    if args.cmd == "serve":
        from instructkit.feedback.app import serve

        serve(args.db, args.host, args.port, secure_cookies=args.secure_cookies)
        return 0
    if args.cmd == "simulate":
        from instructkit.feedback.simulate import simulate

        summary = simulate(args.url, args.project, args.world, args.tokens, pool=args.pool, limit=args.limit,
                           seed=args.seed)
        print(f"label simulate: {summary['labels']} labels by {summary['labelers']} labelers "
              f"in {summary['seconds']:.1f}s")
        return 0
    if args.cmd == "bench":
        from instructkit.feedback.bench import run_bench

        run_bench(args.db, args.labelers, args.labels)
        return 0
    if args.cmd == "migrate":
        from instructkit.feedback import db as D

        engine = D.make_engine(args.db)
        D.upgrade(engine, args.revision)
        print(f"label: {args.db} is at schema revision {D.current_revision(engine)}")
        return 0
    sessions = _sessions(args.db)
    with sessions() as db:
        if args.cmd == "user":
            if args.action == "add":
                user = S.create_user(db, args.name, _password(args.password), args.role)
                print(f"label: created {user.role} {user.username}")
            else:
                user = db.scalar(select(User).where(User.username == args.name))
                if user is None:
                    raise InputError(f"no user {args.name!r}")
                S.set_password(user, _password(args.password))
                print(f"label: new password for {user.username}")
        elif args.cmd == "token":
            user = db.scalar(select(User).where(User.username == args.name))
            if user is None:
                raise InputError(f"no user {args.name!r}; create it with `instructkit label user add {args.name}`")
            print(S.create_token(db, user, args.label))
        elif args.cmd == "project":
            if args.action == "list":
                for p in db.scalars(select(Project).order_by(Project.id)):
                    print(json.dumps({"id": p.id, "name": p.name, **svc.project_stats(db, p)}))
                return 0
            if not args.name:
                raise InputError("give the project's name: project create NAME")
            settings = {}
            if args.overlap is not None:
                settings["overlap"] = args.overlap
            if args.k:
                from instructkit.sandbox.cli import parse_k

                settings["k_min"], settings["k_max"] = parse_k(args.k)
            if args.flags is not None:
                settings["flags"] = [f.strip() for f in args.flags.split(",") if f.strip()]
            if args.instructions is not None:
                settings["instructions"] = args.instructions
            p = svc.create_project(db, args.name, **settings)
            print(f"label: created project {p.name} (id {p.id})")
        elif args.cmd == "import-prompts":
            p = svc.get_project(db, args.project)
            out = svc.import_prompts(db, p, _records(args.file))
            if args.demonstrations:
                out["demonstration_tasks"] = svc.make_tasks(db, p, "demonstration")
            print(f"label: {json.dumps(out)}")
        elif args.cmd == "import-outputs":
            out = svc.import_outputs(db, svc.get_project(db, args.project), _records(args.file))
            print(f"label: {json.dumps(out)}")
        elif args.cmd == "generate":
            from instructkit.feedback.generate import generate_outputs

            project_id = svc.get_project(db, args.project).id
            db.close()
            out = generate_outputs(sessions, project_id, {
                "models": args.models, "k": args.k, "temperatures": args.temperatures,
                "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "seed": args.seed})
            print(f"label generate: {json.dumps(out)}")
            return 0
        elif args.cmd == "tasks":
            models = [m.strip() for m in args.models.split(",")] if args.models else None
            n = svc.make_tasks(db, svc.get_project(db, args.project), args.kind, models)
            print(f"label: created {n} {args.kind} tasks")
        elif args.cmd == "export":
            from instructkit.data.jsonl import write_jsonl

            records = svc.export_records(db, svc.get_project(db, args.project), args.kind, args.include_rejected)
            if not records:
                raise InputError(f"no {args.kind} labels to export in project {args.project!r}")
            n = write_jsonl(args.out, records)
            print(f"label: wrote {n} {args.kind} records -> {args.out}")
            return 0
        elif args.cmd == "quality":
            q = svc.quality(db, svc.get_project(db, args.project))
            text = json.dumps(q, indent=2)
            if args.json:
                from instructkit.data.jsonl import write_json

                write_json(args.json, q)
            print(text)
            return 0
        db.commit()
    return 0


def main(argv: list[str] | None = None) -> int:
    from instructkit.feedback.labels import LabelError
    from instructkit.feedback.service import Forbidden, NotFound

    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import fastapi  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError:
        raise InputError("the labeling app needs its extra: pip install 'instructkit[app]'") from None
    try:
        return run(args)
    except LabelError as e:
        raise InputError(e.message, field=e.field) from None
    except (NotFound, Forbidden) as e:
        raise InputError(str(e)) from None
