"""The labeling app's storage, the same tests on SQLite and on a real PostgreSQL started here on
loopback: migrations (fresh, and an upgrade that keeps labels), the schema matching the models,
import -> tasks -> overlap assignment -> labels -> export round trips, and concurrent API labelers
(every label stored once, none lost).

Load size: INSTRUCTKIT_LOAD_LABELS labels for each of 20 labelers (default 5 to keep `make test`
short; the acceptance size is 200: `INSTRUCTKIT_LOAD_LABELS=200 pytest tests/test_feedback_storage.py
-k load`, or `instructkit label bench --db URL`)."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="the labeling app needs its extra: pip install 'instructkit[app]'")
pytest.importorskip("fastapi", reason="the labeling app needs its extra: pip install 'instructkit[app]'")

from sqlalchemy import func, select, text  # noqa: E402

from instructkit import data as datalib  # noqa: E402
from instructkit.data.jsonl import write_jsonl  # noqa: E402
from instructkit.feedback import bench  # noqa: E402
from instructkit.feedback import db as D  # noqa: E402
from instructkit.feedback import security as S  # noqa: E402
from instructkit.feedback import service as svc  # noqa: E402
from instructkit.feedback.app import ServerThread, create_app  # noqa: E402

LOAD_LABELERS = 20
LOAD_LABELS = int(os.environ.get("INSTRUCTKIT_LOAD_LABELS", "5"))


# ----------------------------------------------------------------------------- a PostgreSQL on loopback

def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    """initdb into a temp dir, postgres on 127.0.0.1:PORT with its socket in that dir; as the
    `postgres` user when we are root (the server refuses to run as root)."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="instructkit-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no `postgres` user to run the server as")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self.as_user, *cmd], check=True, capture_output=True, timeout=120)

    def start(self) -> str:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "ik", "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"),
                  "-w", "-t", "60", "start")
        return f"postgresql://ik@127.0.0.1:{self.port}/postgres"

    def new_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:10]}"
        engine = D.make_engine(f"postgresql://ik@127.0.0.1:{self.port}/postgres")
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        engine.dispose()
        return f"postgresql://ik@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_cluster():
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (Debian: apt-get install postgresql; `make test` "
                    "installs it)")
    cluster = PostgresCluster(bindir)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'labels.db'}"
    return request.getfixturevalue("pg_cluster").new_database()


def _sessions(url: str, revision: str = "head"):
    engine = D.make_engine(url)
    D.upgrade(engine, revision)
    return engine, D.session_factory(engine)


# ----------------------------------------------------------------------------- migrations

def test_fresh_database_migrates_to_head_and_matches_the_models(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine, _ = _sessions(db_url)
    assert D.current_revision(engine) == D.HEAD
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), D.Base.metadata)
    assert diff == [], f"the models and the migrations disagree: {diff}"
    D.upgrade(engine)  # running again (every start does) is a no-op
    assert D.current_revision(engine) == D.HEAD
    engine.dispose()


def test_upgrade_from_the_first_revision_keeps_labels(db_url):
    """A database made by the first release (revision 0001) with a label in it is upgraded by the
    app's start; the label survives, and the new review columns get their defaults."""
    engine, _ = _sessions(db_url, "0001")
    assert D.current_revision(engine) == "0001"
    with engine.begin() as conn:  # rows written as the 0001 schema had them (no review columns)
        now = D.utcnow()
        conn.execute(text("INSERT INTO users (id, username, password_hash, role, active, created_at) "
                          "VALUES (1, 'ann', '!', 'labeler', true, :t)"), {"t": now})
        conn.execute(text("INSERT INTO projects (id, name, instructions, overlap, k_min, k_max, flags, "
                          "require_likert, template, created_at) VALUES (1, 'old', '', 1, 2, 2, '[]', true, "
                          "'plain', :t)"), {"t": now})
        conn.execute(text("INSERT INTO prompts (id, project_id, text, text_hash, meta, created_at) "
                          "VALUES (1, 1, 'p', :h, '{}', :t)"), {"h": D.text_hash("p"), "t": now})
        conn.execute(text("INSERT INTO outputs (id, prompt_id, text, model, created_at) VALUES "
                          "(1, 1, 'a', 'm', :t), (2, 1, 'b', 'm', :t)"), {"t": now})
        conn.execute(text("INSERT INTO tasks (id, project_id, prompt_id, kind, key, output_ids, created_at) "
                          "VALUES (1, 1, 1, 'ranking', 'ranking', '[1, 2]', :t)"), {"t": now})
        conn.execute(text("INSERT INTO assignments (id, task_id, labeler_id, slot, status, created_at, updated_at) "
                          "VALUES (1, 1, 1, 0, 'submitted', :t, :t)"), {"t": now})
        conn.execute(text("INSERT INTO labels (id, assignment_id, task_id, labeler_id, payload, created_at, "
                          "updated_at) VALUES (1, 1, 1, 1, :p, :t, :t)"),
                     {"p": '{"ranks": [2, 1], "likert": null, "flags": [{}, {}], "not_rankable": false}', "t": now})
    engine.dispose()

    app = create_app(db_url)  # what `instructkit label serve` does at start
    assert D.current_revision(app.state.engine) == D.HEAD
    with app.state.sessions() as db:
        label = db.get(D.Label, 1)
        assert label.payload["ranks"] == [2, 1]
        assert label.review_status == "pending" and label.review_note == "" and label.seconds is None
        records = svc.export_records(db, svc.get_project(db, "old"), "rankings")
    assert records == [{"prompt": "p", "completions": ["a", "b"], "ranks": [2, 1], "labeler": "ann",
                        "flags": [{}, {}], "models": ["m", "m"]}]
    app.state.engine.dispose()


# ----------------------------------------------------------------------------- round trips

def test_import_label_export_round_trip(db_url, tmp_path):
    engine, sessions = _sessions(db_url)
    with sessions() as db:
        p = svc.create_project(db, "rt", overlap=2, k_min=3, k_max=3)
        out = svc.import_prompts(db, p, [({"prompt": "Write a haiku.", "task": "poem"}, "p.jsonl", 1),
                                         ({"prompt": "Write a haiku."}, "p.jsonl", 2)])
        assert out == {"added": 1, "existing": 1}
        out = svc.import_outputs(db, p, [
            ({"prompt": "Explain gravity.", "completions": ["It pulls.", "Mass attracts mass.", "<b>idk</b>"],
              "models": ["sft", "ppo", "ppo"]}, "o.jsonl", 1),
            ({"prompt": "Gold item", "completions": ["good", "bad", "ugly"], "ranks": [1, 2, 3]}, "o.jsonl", 2)])
        assert out == {"prompts_added": 2, "outputs": 6, "tasks": 2}
        assert svc.make_tasks(db, p, "demonstration") == 3
        assert svc.make_tasks(db, p, "demonstration") == 0  # idempotent
        ann = S.create_user(db, "ann", None)
        bob = S.create_user(db, "bob", None)
        cid = S.create_user(db, "cid", None)
        db.commit()

        given = {}
        for user in (ann, bob):
            while (a := svc.next_assignment(db, p, user, "ranking")) is not None:
                task = db.get(D.Task, a.task_id)
                ranks = [1, 1, 2] if user is ann else [1, 2, 3]
                svc.submit(db, a, user, {"ranks": ranks, "likert": [7, 6, 1],
                                         "flags": [{}, {"hallucination": True}, {"inappropriate": True}]})
                given[(task.id, user.username)] = ranks
            db.commit()
        # overlap 2: both ranking tasks went to ann and bob; cid finds nothing left
        assert svc.next_assignment(db, p, cid, "ranking") is None
        assert svc.progress(db, p, ann, "ranking") == {"done": 2, "pending": 0, "available": 0, "total": 2,
                                                     "skipped": 0}
        a = svc.next_assignment(db, p, cid, "demonstration")
        svc.submit(db, a, cid, {"completion": "  An old silent pond.\r\nA frog jumps in.  "})
        db.commit()

        records = svc.export_records(db, p, "rankings")
        demos = svc.export_records(db, p, "demonstrations")
        stats = svc.project_stats(db, p)
    assert (stats["prompts"], stats["outputs"], stats["gold_tasks"], stats["models"]) == (3, 6, 1, ["ppo", "sft"])
    assert stats["kinds"]["ranking"] == {"tasks": 2, "labels": 4, "needed": 4}
    assert len(records) == 4 and len(demos) == 1
    write_jsonl(tmp_path / "rankings.jsonl", records)
    write_jsonl(tmp_path / "demos.jsonl", demos)
    parsed = datalib.load(tmp_path / "rankings.jsonl", "ranking")
    assert {(r.prompt, r.labeler) for r in parsed} == {(p_, lab) for p_ in ("Explain gravity.", "Gold item")
                                                      for lab in ("ann", "bob")}
    for r in parsed:
        assert r.k == 3 and r.likert == [7, 6, 1] and not r.not_rankable
        assert r.flags[1]["hallucination"] is True and r.flags[2]["inappropriate"] is True
        assert set(r.flags[0]) == set(svc.TABLE3_FLAGS)  # every Table 3 flag, false when not raised
        by_text = dict(zip(r.completions, r.ranks))
        if r.prompt == "Explain gravity.":
            assert sorted(r.completions) == sorted(["It pulls.", "Mass attracts mass.", "<b>idk</b>"])
            assert r.meta["models"] == [{"It pulls.": "sft"}.get(c, "ppo") for c in r.completions]
        assert sorted(by_text.values()) == ([1, 1, 2] if r.labeler == "ann" else [1, 2, 3])
    demo = datalib.load(tmp_path / "demos.jsonl", "demonstration")[0]
    assert (demo.prompt, demo.completion, demo.meta) == ("Write a haiku.", "An old silent pond.\nA frog jumps in.",
                                                         {"labeler": "cid", "task": "poem"})
    engine.dispose()


def test_resubmitting_replaces_the_label_and_skipping_frees_the_slot(db_url):
    engine, sessions = _sessions(db_url)
    with sessions() as db:
        p = svc.create_project(db, "skip", overlap=1, k_min=2, k_max=2)
        svc.import_outputs(db, p, [({"prompt": "q", "completions": ["x", "y"]}, "o", 1)])
        ann, bob = S.create_user(db, "ann", None), S.create_user(db, "bob", None)
        a = svc.next_assignment(db, p, ann)
        assert svc.next_assignment(db, p, bob) is None  # overlap 1: the task is held by ann
        svc.skip(db, a, ann)
        b = svc.next_assignment(db, p, bob)
        assert b is not None and b.task_id == a.task_id
        _, created = svc.submit(db, b, bob, {"ranks": [1, 2], "likert": [5, 3]})
        _, again = svc.submit(db, b, bob, {"ranks": [2, 1], "likert": [3, 5]})
        db.commit()
        assert (created, again) == (True, False)
        labels = db.scalars(select(D.Label)).all()
        assert len(labels) == 1 and labels[0].payload["ranks"] == [2, 1]
        with pytest.raises(svc.LabelError):
            svc.submit(db, a, ann, {"ranks": [1, 2], "likert": [5, 3]})  # ann skipped it
    engine.dispose()


# ----------------------------------------------------------------------------- load

def test_concurrent_api_labelers_store_every_label_exactly_once(db_url):
    """20 labelers at once through a real server's HTTP API, some labels sent twice (client
    retries): the database holds exactly one label per (task, labeler), none lost."""
    app = create_app(db_url)
    project, tokens = bench.setup_load(app.state.sessions, LOAD_LABELERS, LOAD_LABELS)
    with ServerThread(app) as url:
        result = bench.run_load(url, project, tokens, retry_every=4)
    check = bench.verify(app.state.sessions, project, LOAD_LABELERS, LOAD_LABELS)
    kind = db_url.split(":", 1)[0]
    print(f"\nload ({kind}): {result['submissions']} submissions (+{result['retries']} retries) by {LOAD_LABELERS} "
          f"labelers in {result['seconds']:.1f}s = {result['per_second']:.0f} submissions/s")
    assert result["submissions"] == LOAD_LABELERS * LOAD_LABELS
    assert result["per_labeler"] == [LOAD_LABELS] * LOAD_LABELERS
    assert check["labels"] == check["distinct"] == check["expected"] == LOAD_LABELERS * LOAD_LABELS
    assert check["per_labeler_min"] == check["per_labeler_max"] == LOAD_LABELS
    with app.state.sessions() as db:  # no task was over-assigned either
        slots = db.execute(select(D.Assignment.task_id, func.count()).group_by(D.Assignment.task_id)).all()
        assert all(n == LOAD_LABELERS for _, n in slots) and len(slots) == LOAD_LABELS
    app.state.engine.dispose()


def test_concurrent_next_never_over_assigns_a_task(db_url):
    """Many labelers asking for work at the same moment: no task gets more than `overlap` of them."""
    engine, sessions = _sessions(db_url)
    with sessions() as db:
        p = svc.create_project(db, "race", overlap=2, k_min=2, k_max=2)
        svc.import_outputs(db, p, [({"prompt": f"q{i}", "completions": ["x", "y"]}, "o", i + 1) for i in range(3)])
        users = [S.create_user(db, f"u{i}", None) for i in range(10)]
        db.commit()
        project_id, user_ids = p.id, [u.id for u in users]
    got, barrier = [], threading.Barrier(len(user_ids))

    def ask(uid):
        with sessions() as db:
            barrier.wait()
            a = svc.next_assignment(db, db.get(D.Project, project_id), db.get(D.User, uid))
            db.commit()
            got.append(a.task_id if a else None)

    threads = [threading.Thread(target=ask, args=(u,)) for u in user_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assigned = [t for t in got if t is not None]
    assert len(assigned) == 6 and all(assigned.count(t) == 2 for t in set(assigned))  # 3 tasks x overlap 2
    engine.dispose()
