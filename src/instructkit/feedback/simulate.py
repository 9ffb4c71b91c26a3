"""Programmatic labelers over the HTTP API: a small client, and the sandbox's simulated labelers
working through the app with their tokens, exactly as a person's browser or an AI labeler would:

    GET /api/v1/projects/P/next?kind=ranking -> task;  PUT /api/v1/assignments/A/label?next=1 -> next task

A label PUT is idempotent (it replaces the labeler's answer to that assignment), so a client may
retry after a dropped connection without ever storing a label twice."""
from __future__ import annotations

import http.client
import json
import random
import threading
import time
from urllib.parse import urlsplit

from instructkit.errors import InputError


class ApiError(RuntimeError):
    def __init__(self, status: int, body):
        self.status, self.body = status, body
        super().__init__(f"HTTP {status}: {body}")


class ApiClient:
    """One keep-alive connection; JSON in and out; one retry after a dropped connection."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0):
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise InputError(f"expected an http(s) URL, got {url!r}", field="--url")
        self.scheme, self.host, self.port, self.timeout = u.scheme, u.hostname, u.port, timeout
        self.token = token
        self.conn = None

    def _connect(self):
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        self.conn = cls(self.host, self.port, timeout=self.timeout)

    def request(self, method: str, path: str, body=None, *, raw: bytes | None = None, ok=(200, 201, 202, 204)):
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            if self.conn is None:
                self._connect()
            try:
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                payload = resp.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, http.client.CannotSendRequest):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        text = payload.decode("utf-8", "replace")
        try:
            parsed = json.loads(text) if text else None
        except json.JSONDecodeError:
            parsed = text
        if resp.status not in ok:
            raise ApiError(resp.status, parsed)
        return resp.status, parsed

    def get(self, path: str):
        return self.request("GET", path)[1]

    def put(self, path: str, body):
        return self.request("PUT", path, body)[1]

    def post(self, path: str, body=None):
        return self.request("POST", path, body)[1]

    def close(self):
        if self.conn is not None:
            self.conn.close()


def sandbox_answer(labeler, world, task: dict, rng) -> dict:
    """A simulated labeler's answer to a ranking or comparison task (the sandbox's labeler model)."""
    prompt, outs = task["prompt"], task["outputs"]
    ranks = labeler.rank(world, prompt, outs, rng)
    if task["kind"] == "comparison":
        return {"choice": "tie" if ranks[0] == ranks[1] else ("A" if ranks[0] < ranks[1] else "B")}
    asked = set(task["flags"])
    flags = [{k: v for k, v in f.items() if k in asked and (v is None or isinstance(v, bool))}
             for f in labeler.flags(world, prompt, outs, rng)]
    return {"ranks": ranks, "likert": labeler.likert(world, prompt, outs, rng), "flags": flags}


def simulate(url: str, project: str, world_dir: str, tokens_file: str, *, pool: str = "train", limit: int = 0,
             seed: int = 0, kinds=("ranking", "comparison")) -> dict:
    """Each token is one simulated labeler (the pool's i-th); all work concurrently until their queues
    are empty (or `limit` labels each)."""
    from pathlib import Path

    from instructkit.sandbox.labelers import pool as get_pool
    from instructkit.sandbox.world import World

    tokens = [t.strip() for t in Path(tokens_file).read_text().splitlines() if t.strip()]
    if not tokens:
        raise InputError("no tokens in the file", path=tokens_file)
    world = World.load(world_dir)
    labelers = get_pool(pool)
    done = [0] * len(tokens)
    errors: list[BaseException] = []

    def work(idx: int, token: str):
        client = ApiClient(url, token)
        rng = random.Random(f"instructkit-simulate/{seed}/{idx}")
        lab = labelers[idx % len(labelers)]
        try:
            for kind in kinds:
                task = client.get(f"/api/v1/projects/{project}/next?kind={kind}")
                while task and (not limit or done[idx] < limit):
                    answer = sandbox_answer(lab, world, task, rng)
                    task = client.put(f"/api/v1/assignments/{task['assignment']}/label?next=1", answer)["next"]
                    done[idx] += 1
        except BaseException as e:  # reported after all threads end
            errors.append(e)
        finally:
            client.close()

    t0 = time.time()
    threads = [threading.Thread(target=work, args=(i, t)) for i, t in enumerate(tokens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return {"labels": sum(done), "labelers": len(tokens), "per_labeler": done, "seconds": time.time() - t0}
