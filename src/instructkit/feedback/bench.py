"""Load benchmark: N concurrent API labelers each submit M K-way rankings through the HTTP API of a
real server (uvicorn on 127.0.0.1), then the database is checked: every label stored exactly once,
none lost. Prints submissions/s. `instructkit label bench [--db URL] [--labelers 20] [--labels 200]`;
tests/test_feedback_storage.py runs it on SQLite and PostgreSQL."""
from __future__ import annotations

import random
import tempfile
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy import func, select

from instructkit.feedback import security as S
from instructkit.feedback import service as svc
from instructkit.feedback.db import Label, Task, User
from instructkit.feedback.simulate import ApiClient

K = 4


def setup_load(sessions, n_labelers: int, n_labels: int, name: str | None = None) -> tuple[str, list[str]]:
    """A project of `n_labels` ranking tasks that every one of `n_labelers` token-only users labels."""
    name = name or f"load-{uuid.uuid4().hex[:8]}"
    with sessions() as db:
        p = svc.create_project(db, name, overlap=n_labelers, k_min=K, k_max=K)
        svc.import_outputs(db, p, [({"prompt": f"{name} prompt {i}", "completions": [f"answer {i}.{j}" for j in range(K)]},
                                    "load", i + 1) for i in range(n_labels)])
        tokens = [S.create_token(db, S.create_user(db, f"{name}-{j:02d}", None), "load") for j in range(n_labelers)]
        db.commit()
    return name, tokens


def run_load(url: str, project: str, tokens: list[str], retry_every: int = 25) -> dict:
    """Every labeler works through its queue concurrently (GET next, then PUT label?next=1); every
    `retry_every`-th label is sent twice, as a client retrying after a lost response would."""
    counts = [0] * len(tokens)
    retries = [0] * len(tokens)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(tokens))

    def work(idx: int, token: str):
        rng = random.Random(idx)
        client = ApiClient(url, token)
        try:
            barrier.wait()
            task = client.get(f"/api/v1/projects/{project}/next?kind=ranking")
            while task:
                ranks = [rng.randint(1, K) for _ in range(K)]
                body = {"ranks": ranks, "likert": [rng.randint(1, 7) for _ in range(K)],
                        "flags": [{"hallucination": rng.random() < 0.2} for _ in range(K)]}
                path = f"/api/v1/assignments/{task['assignment']}/label"
                if retry_every and counts[idx] % retry_every == retry_every - 1:
                    status, _ = client.request("PUT", path, body)
                    retries[idx] += 1
                    assert status == 201, status
                    status, reply = client.request("PUT", path + "?next=1", body)
                    assert status == 200 and reply["created"] is False, (status, reply)
                else:
                    reply = client.put(path + "?next=1", body)
                counts[idx] += 1
                task = reply["next"]
        except BaseException as e:
            errors.append(e)
        finally:
            client.close()

    threads = [threading.Thread(target=work, args=(i, t), name=f"labeler-{i}") for i, t in enumerate(tokens)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise errors[0]
    n = sum(counts)
    return {"submissions": n, "retries": sum(retries), "per_labeler": counts, "seconds": seconds,
            "per_second": n / seconds if seconds else float("inf")}


def verify(sessions, project: str, n_labelers: int, n_labels: int) -> dict:
    """Every (task, labeler) has exactly one label and each labeler has all of theirs."""
    with sessions() as db:
        p = svc.get_project(db, project)
        base = select(Label).join(Task, Task.id == Label.task_id).where(Task.project_id == p.id).subquery()
        total = db.scalar(select(func.count()).select_from(base))
        distinct = db.scalar(select(func.count()).select_from(
            select(base.c.task_id, base.c.labeler_id).distinct().subquery()))
        per = dict(db.execute(select(User.username, func.count()).join(base, base.c.labeler_id == User.id)
                              .group_by(User.username)).all())
    return {"labels": total, "distinct": distinct, "expected": n_labelers * n_labels,
            "per_labeler_min": min(per.values(), default=0), "per_labeler_max": max(per.values(), default=0)}


def run_bench(db_url: str | None, n_labelers: int = 20, n_labels: int = 200) -> dict:
    from instructkit.feedback.app import ServerThread, create_app

    tmp = None
    if not db_url:
        tmp = tempfile.TemporaryDirectory(prefix="instructkit-bench-")
        db_url = f"sqlite:///{Path(tmp.name) / 'bench.db'}"
    app = create_app(db_url)
    project, tokens = setup_load(app.state.sessions, n_labelers, n_labels)
    with ServerThread(app) as url:
        result = run_load(url, project, tokens)
    check = verify(app.state.sessions, project, n_labelers, n_labels)
    kind = db_url.split(":", 1)[0]
    print(f"label bench ({kind}): {result['submissions']} submissions (+{result['retries']} retried) by "
          f"{n_labelers} concurrent labelers in {result['seconds']:.1f}s = {result['per_second']:.0f} submissions/s; "
          f"stored {check['labels']} labels, {check['distinct']} distinct, expected {check['expected']}")
    app.state.engine.dispose()
    if tmp is not None:
        tmp.cleanup()
    if not check["labels"] == check["distinct"] == check["expected"]:
        raise RuntimeError(f"labels lost or duplicated: {check}")
    return {**result, **check}
