"""The labeling app over HTTP (a real uvicorn on 127.0.0.1, SQLite): the JSON API labelers and
admins use, agreement against a hand-computed example, security (escaping, isolation between
labelers, CSRF, size and shape limits), the `instructkit label` CLI, sampling K outputs from two
model directories, and the sandbox's simulated labelers working through the API."""
from __future__ import annotations

import json
import re
import time

import pytest

pytest.importorskip("fastapi", reason="the labeling app needs its extra: pip install 'instructkit[app]'")
httpx = pytest.importorskip("httpx", reason="the labeling app's tests need httpx (the `app` extra)")

from sqlalchemy import func, select  # noqa: E402

from instructkit import data as datalib  # noqa: E402
from instructkit.cli import main as cli_main  # noqa: E402
from instructkit.feedback import db as D  # noqa: E402
from instructkit.feedback import security as S  # noqa: E402
from instructkit.feedback.agreement import krippendorff_alpha  # noqa: E402
from instructkit.feedback.app import ServerThread, create_app  # noqa: E402

PASSWORD = "correct horse battery"


class Site:
    def __init__(self, url, db_url, app, tokens):
        self.url, self.db_url, self.app, self.tokens = url, db_url, app, tokens

    def api(self, who: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.tokens[who]}"}, timeout=30)

    def browser_like(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, follow_redirects=False)

    def label_count(self) -> int:
        with self.app.state.sessions() as db:
            return db.scalar(select(func.count()).select_from(D.Label))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelapp")
    db_url = f"sqlite:///{root / 'labels.db'}"
    app = create_app(db_url)
    tokens = {}
    with app.state.sessions() as db:
        for name, role in (("root", "admin"), ("ann", "labeler"), ("bob", "labeler"), ("cid", "labeler")):
            tokens[name] = S.create_token(db, S.create_user(db, name, PASSWORD, role))
        db.commit()
    with ServerThread(app) as url:
        yield Site(url, db_url, app, tokens)
    app.state.engine.dispose()


def login(client: httpx.Client, username: str, password: str = PASSWORD) -> str:
    """Log in like a browser; returns the session's CSRF token (from a page's form)."""
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = client.post("/login", data={"username": username, "password": password, "csrf_token": token})
    assert r.status_code == 303, r.text
    page = client.get("/mine")
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


def make_project(site: Site, name: str, records: list[dict], **settings) -> dict:
    with site.api("root") as admin:
        r = admin.post("/api/v1/projects", json={"name": name, **settings})
        assert r.status_code == 201, r.text
        r = admin.post(f"/api/v1/projects/{name}/outputs", json={"records": records})
        assert r.status_code == 200, r.text
        return r.json()


# ----------------------------------------------------------------------------- agreement

def test_agreement_and_gold_accuracy_match_a_hand_computed_example(site):
    """Three labelers rank one gold item with K = 3 (gold order A > B > C):
         ann [1, 2, 3]   bob [1, 3, 2]   cid [2, 1, 3]
    Output pairs (A,B), (A,C), (B,C); who prefers which:
         ann  A  A  B        bob  A  A  C        cid  B  A  B
    ann-bob agree on 2 of 3, ann-cid 2 of 3, bob-cid 1 of 3: overall 5/9 = 55.6%;
    per labeler ann (2+2)/6, bob (2+1)/6, cid (2+1)/6. Gold accuracy: ann 3/3, bob 2/3, cid 2/3."""
    make_project(site, "agree", [{"prompt": "Name three colours.", "completions": ["red green blue", "red", "idk"],
                                  "ranks": [1, 2, 3]}], overlap=3, k_min=3, k_max=3)
    given = {"ann": [1, 2, 3], "bob": [1, 3, 2], "cid": [2, 1, 3]}
    likert = {"ann": [7, 4, 1], "bob": [6, 2, 3], "cid": [4, 5, 1]}
    for who, ranks in given.items():
        with site.api(who) as c:
            task = c.get("/api/v1/projects/agree/next?kind=ranking").json()
            assert task["outputs"] == ["red green blue", "red", "idk"] and task["k"] == 3
            r = c.put(f"/api/v1/assignments/{task['assignment']}/label", json={"ranks": ranks, "likert": likert[who]})
            assert r.status_code == 201, r.text
            assert c.get("/api/v1/projects/agree/next?kind=ranking").status_code == 204  # queue empty
    with site.api("root") as admin:
        q = admin.get("/api/v1/projects/agree/quality").json()
    rk = q["ranking"]
    assert (rk["agreement"], rk["pairs_compared"]) == (pytest.approx(5 / 9), 9)
    assert {k: v["agreement"] for k, v in rk["per_labeler"].items()} == pytest.approx(
        {"ann": 4 / 6, "bob": 3 / 6, "cid": 3 / 6})
    gold = {row["labeler"]: row["gold_accuracy"] for row in q["labelers"]}
    assert gold == pytest.approx({"ann": 1.0, "bob": 2 / 3, "cid": 2 / 3})
    assert [row["below_gold_threshold"] for row in q["labelers"]] == [False, True, True]
    units = [[likert[w][i] for w in given] for i in range(3)]
    assert rk["alpha_likert_interval"] == pytest.approx(krippendorff_alpha(units, "interval"))
    # pair orders, nominal: units (A,B) = [-1,-1,+1], (A,C) = [-1,-1,-1], (B,C) = [-1,+1,-1]; by hand:
    # o(-1,-1) = 2/2 + 6/2 + 2/2 = 5, o(-1,+1) = o(+1,-1) = 2; n = 9, n(-1) = 7, n(+1) = 2
    # D_o = 4/9, D_e = 2*7*2/(9*8) = 28/72 -> alpha = 1 - (4/9)/(28/72) = -1/7
    assert rk["alpha_pairs_nominal"] == pytest.approx(-1 / 7)


# ----------------------------------------------------------------------------- the API flow

def test_api_labelers_rank_compare_review_and_export(site, tmp_path):
    make_project(site, "flow", [
        {"prompt": "Explain the moon.", "completions": ["It orbits.", "Cheese.", "A rock that orbits Earth.", "Hm."],
         "models": ["sft", "base", "sft", "base"], "task": "explain"},
        {"prompt": "Say hi.", "completion": "hi", "model": "base"},
        {"prompt": "Say hi.", "completion": "Hello! How can I help?", "model": "sft"}], overlap=1, k_min=2, k_max=4)
    with site.api("root") as admin:
        assert admin.post("/api/v1/projects/flow/tasks", json={"kind": "comparison", "models": ["sft", "base"]}
                          ).json() == {"created": 2}
    with site.api("ann") as ann:
        projects = {p["name"]: p for p in ann.get("/api/v1/projects").json()}
        assert projects["flow"]["progress"]["available"] == 3
        task = ann.get("/api/v1/projects/flow/next?kind=ranking").json()
        assert "models" not in json.dumps(task)  # labelers never see which model wrote what
        flags = [{} for _ in range(4)]
        flags[1] = {"hallucination": True, "fails_instruction": True}
        r = ann.put(f"/api/v1/assignments/{task['assignment']}/label?next=1",
                    json={"ranks": [2, 4, 1, 3], "likert": [5, 1, 7, 3], "flags": flags})
        assert r.status_code == 201 and r.json()["next"] is None
        seen = []
        while (t := ann.get("/api/v1/projects/flow/next?kind=comparison")).status_code == 200:
            t = t.json()
            seen.append(t["outputs"])
            better = "A" if t["outputs"][0] in ("It orbits.", "A rock that orbits Earth.", "Hello! How can I help?") else "B"
            assert ann.put(f"/api/v1/assignments/{t['assignment']}/label", json={"choice": better}).status_code == 201
        assert len(seen) == 2
        mine = ann.get("/api/v1/labels?project=flow").json()
        assert len(mine) == 3 and all(m["status"] == "submitted" for m in mine)
    with site.api("root") as admin:
        rankings = admin.get("/api/v1/projects/flow/export?kind=rankings")
        comparisons = admin.get("/api/v1/projects/flow/export?kind=comparisons").text
        pending = admin.get("/api/v1/projects/flow/review").json()
        assert {p["kind"] for p in pending} == {"ranking", "comparison"}
        reject = next(p for p in pending if p["kind"] == "comparison")
        assert admin.post(f"/api/v1/labels/{reject['label']}/review",
                          json={"status": "rejected", "note": "look again"}).status_code == 200
        after = admin.get("/api/v1/projects/flow/export?kind=comparisons").text
    assert rankings.headers["content-type"].startswith("application/x-ndjson")
    (tmp_path / "r.jsonl").write_text(rankings.text)
    (r,) = datalib.load(tmp_path / "r.jsonl", "ranking")
    assert r.prompt == "Explain the moon." and r.labeler == "ann" and r.meta["task"] == "explain"
    assert dict(zip(r.completions, r.ranks)) == dict(zip(task["outputs"], [2, 4, 1, 3]))
    assert dict(zip(r.completions, r.likert)) == dict(zip(task["outputs"], [5, 1, 7, 3]))
    bad = r.flags[r.completions.index(task["outputs"][1])]
    assert bad["hallucination"] and bad["fails_instruction"] and not bad["sexual"]
    (tmp_path / "c.jsonl").write_text(comparisons)
    comps = datalib.load(tmp_path / "c.jsonl", "ranking")
    assert len(comps) == 2 and all(c.k == 2 for c in comps)
    for c in comps:  # the sft output won every comparison, and `models` says which side was which
        assert c.meta["models"][c.ranks.index(1)] == "sft"
    assert len(after.splitlines()) == 1  # the rejected label is left out of the export
    with site.api("ann") as ann:  # ... and goes back to its labeler with the note
        mine = {m["label"]: m for m in ann.get("/api/v1/labels?project=flow").json()}
        assert (mine[reject["label"]]["review"], mine[reject["label"]]["note"]) == ("rejected", "look again")


# ----------------------------------------------------------------------------- security

def test_model_output_with_script_is_shown_as_text(site):
    evil = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>'
    make_project(site, "xss", [{"prompt": "<b>bold?</b>", "completions": [evil, "fine"]}], k_min=2, k_max=2)
    with site.browser_like() as c:
        login(c, "bob")
        r = c.get(f"/projects/{_project_id(site, 'xss')}/next?kind=ranking")
        page = c.get(r.headers["location"])
    assert page.status_code == 200
    assert "<script>document.title" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;document.title=&#34;pwned&#34;&lt;/script&gt;" in page.text
    assert "&lt;b&gt;bold?&lt;/b&gt;" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]  # no inline script could run anyway


def _project_id(site: Site, name: str) -> int:
    with site.app.state.sessions() as db:
        return db.scalar(select(D.Project.id).where(D.Project.name == name))


def test_a_labeler_cannot_read_or_change_anothers_work_or_export(site):
    make_project(site, "iso", [{"prompt": "q", "completions": ["x", "y"]}], k_min=2, k_max=2)
    with site.api("ann") as ann:
        task = ann.get("/api/v1/projects/iso/next").json()
        ann.put(f"/api/v1/assignments/{task['assignment']}/label", json={"ranks": [1, 2], "likert": [6, 2]})
    aid, before = task["assignment"], site.label_count()
    with site.api("bob") as bob:
        assert bob.get(f"/api/v1/assignments/{aid}").status_code == 404
        r = bob.put(f"/api/v1/assignments/{aid}/label", json={"ranks": [2, 1], "likert": [1, 7]})
        assert r.status_code == 404
        assert bob.post(f"/api/v1/assignments/{aid}/skip").status_code == 404
        assert all(m["assignment"] != aid for m in bob.get("/api/v1/labels").json())
        for method, path, body in (("GET", "/api/v1/projects/iso/export?kind=rankings", None),
                                   ("GET", "/api/v1/projects/iso/quality", None),
                                   ("GET", "/api/v1/projects/iso/review", None),
                                   ("PATCH", "/api/v1/projects/iso", {"overlap": 5}),
                                   ("POST", "/api/v1/projects", {"name": "mine"}),
                                   ("POST", "/api/v1/users", {"username": "eve", "password": "x" * 10}),
                                   ("POST", "/api/v1/users/bob/tokens", {})):
            r = bob.request(method, path, json=body)
            assert r.status_code == 403 and r.json() == {"error": "admins only"}, (path, r.text)
    with site.browser_like() as c:
        login(c, "bob")
        assert c.get(f"/task/{aid}").status_code == 404
        pid = _project_id(site, "iso")
        assert c.get(f"/admin/projects/{pid}/export?kind=rankings").status_code == 403
        assert c.get("/admin").status_code == 403
    with site.api("ann") as ann:
        assert ann.get(f"/api/v1/assignments/{aid}").json()["label"]["ranks"] == [1, 2]
    assert site.label_count() == before
    with site.api("root") as admin:  # admins read anyone's work, but cannot answer for them
        assert admin.get(f"/api/v1/assignments/{aid}").status_code == 200
        assert admin.put(f"/api/v1/assignments/{aid}/label", json={"ranks": [2, 1], "likert": [1, 7]}).status_code == 404
    with httpx.Client(base_url=site.url) as anon:
        assert anon.get("/api/v1/projects").status_code == 401
        assert anon.get("/api/v1/projects", headers={"Authorization": "Bearer ik_nope"}).status_code == 401
        assert anon.get("/queue").status_code == 303  # to the login page


def test_forms_and_cookie_api_calls_without_the_csrf_token_are_refused(site):
    make_project(site, "csrf", [{"prompt": "q", "completions": ["x", "y"]}], k_min=2, k_max=2)
    with site.browser_like() as c:
        # the login form itself
        c.get("/login")
        r = c.post("/login", data={"username": "cid", "password": PASSWORD})
        assert r.status_code == 403 and "CSRF" in r.text
        csrf = login(c, "cid")
        aid = int(c.get(f"/projects/{_project_id(site, 'csrf')}/next").headers["location"].rsplit("/", 1)[1])
        before = site.label_count()
        form = {"rank_0": "1", "rank_1": "2", "likert_0": "5", "likert_1": "4", "not_rankable": "0"}
        for bad in ({}, {"csrf_token": "forged"}):
            r = c.post(f"/task/{aid}", data={**form, **bad})
            assert r.status_code == 403 and "CSRF token missing or invalid" in r.text
        r = c.put(f"/api/v1/assignments/{aid}/label", json={"ranks": [1, 2], "likert": [5, 4]})
        assert r.status_code == 403 and "CSRF" in r.json()["error"]
        assert c.post("/logout").status_code == 403
        assert site.label_count() == before
        # with the token, the same form and API call work
        assert c.post(f"/task/{aid}", data={**form, "csrf_token": csrf}).status_code == 303
        r = c.put(f"/api/v1/assignments/{aid}/label", json={"ranks": [2, 1], "likert": [5, 4]},
                  headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200 and r.json()["created"] is False
        assert site.label_count() == before + 1


def test_oversized_and_malformed_submissions_get_a_clear_4xx_and_change_nothing(site):
    make_project(site, "limits", [{"prompt": "q", "completions": ["x", "y", "z"]}], k_min=3, k_max=3)
    with site.api("root") as admin:
        admin.post("/api/v1/projects/limits/prompts", json={"records": [{"prompt": "write"}],
                                                             "tasks": ["demonstration"]})
    with site.api("ann") as ann:
        rank = ann.get("/api/v1/projects/limits/next?kind=ranking").json()["assignment"]
        demo = ann.get("/api/v1/projects/limits/next?kind=demonstration").json()["assignment"]
        before = site.label_count()
        cases = [
            (rank, {"ranks": [1, 2], "likert": [1, 2, 3]}, 422, "ranks", "expected 3 integers from 1 to 3"),
            (rank, {"ranks": [1, 2, 3]}, 422, "likert", "expected 3 Likert scores"),
            (rank, {"ranks": [1, 2, 3], "likert": [1, 2, 8]}, 422, "likert", "integers from 1 to 7"),
            (rank, {"ranks": [1, 2, 3], "likert": [1, 2, 3], "flags": [{"nonsense": True}, {}, {}]}, 422, "flags",
             "unknown flag 'nonsense'"),
            (rank, {"ranks": [1, "2", 3], "likert": [1, 2, 3]}, 422, "ranks", "expected 3 integers"),
            (rank, ["not", "an", "object"], 422, None, "expected a JSON object"),
            (demo, {"completion": "   "}, 422, "completion", "must not be empty"),
            (demo, {"completion": "x" * 20_001}, 422, "completion", "at most 20000"),
            (demo, {"choice": "A"}, 422, "completion", "expected the demonstration text"),
        ]
        for aid, body, status, field, message in cases:
            r = ann.put(f"/api/v1/assignments/{aid}/label", json=body)
            assert r.status_code == status and message in r.json()["error"], (body, r.text)
            assert r.json().get("field") == field
        r = ann.put(f"/api/v1/assignments/{rank}/label", content=b'{"ranks": [1, 2, 3], "likert": [1,',
                    headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["error"].startswith("malformed JSON")
        huge = b'{"completion": "' + b"x" * (2 << 20) + b'"}'
        r = ann.put(f"/api/v1/assignments/{demo}/label", content=huge, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "request body too large" in r.json()["error"]
        assert ann.get("/api/v1/projects/limits/next?kind=nonsense").status_code == 422
        assert site.label_count() == before
        assert ann.get(f"/api/v1/assignments/{rank}").json()["status"] == "pending"
    with site.api("root") as admin:  # an import with a bad line imports nothing and names the line
        r = admin.post("/api/v1/projects/limits/prompts", json={"records": [{"prompt": "ok"}, {"prompt": 3}]})
        assert r.status_code == 422 and r.json()["error"] == "records:2: field 'prompt': expected a string, got int"
        assert admin.get("/api/v1/projects").json()  # still serving


# ----------------------------------------------------------------------------- the CLI

def test_cli_project_import_tasks_export_quality(site, tmp_path, capsys):
    db = ["--db", site.db_url]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Tell a joke."}\n{"prompt": "Define entropy.", "task": "define"}\n')
    outputs = tmp_path / "outputs.jsonl"
    outputs.write_text("".join(json.dumps({"prompt": "Define entropy.", "completion": c, "model": m}) + "\n"
                               for c, m in (("disorder", "a"), ("a measure of uncertainty", "b"), ("?", "a"))))
    assert cli_main(["label", "project", "create", "cli", "--overlap", "2", "--k", "2..3", *db]) == 0
    assert cli_main(["label", "import-prompts", str(prompts), "--project", "cli", "--demonstrations", *db]) == 0
    assert cli_main(["label", "import-outputs", str(outputs), "--project", "cli", *db]) == 0
    assert cli_main(["label", "tasks", "--project", "cli", "--kind", "ranking", *db]) == 0
    out = capsys.readouterr().out
    assert '"added": 2' in out and '"demonstration_tasks": 2' in out and "created 1 ranking tasks" in out
    with site.api("ann") as ann:
        t = ann.get("/api/v1/projects/cli/next?kind=ranking").json()
        assert t["k"] == 3
        ann.put(f"/api/v1/assignments/{t['assignment']}/label", json={"ranks": [1, 1, 2], "likert": [5, 5, 2]})
        d = ann.get("/api/v1/projects/cli/next?kind=demonstration").json()
        ann.put(f"/api/v1/assignments/{d['assignment']}/label", json={"completion": "Why did the chicken..."})
    out_file = tmp_path / "exported.jsonl"
    assert cli_main(["label", "export", "--project", "cli", "--kind", "rankings", "--out", str(out_file), *db]) == 0
    (r,) = datalib.load(out_file, "ranking")
    assert sorted(r.ranks) == [1, 1, 2] and r.meta["task"] == "define" and r.labeler == "ann"
    demos = tmp_path / "demos.jsonl"
    assert cli_main(["label", "export", "--project", "cli", "--kind", "demonstrations", "--out", str(demos), *db]) == 0
    assert datalib.load(demos, "demonstration")[0].completion == "Why did the chicken..."
    capsys.readouterr()
    assert cli_main(["label", "quality", "--project", "cli", *db]) == 0
    assert json.loads(capsys.readouterr().out)["ranking"]["labeled_items"] == 1
    # a bad line: exit 2, one line naming file, line and field, nothing imported
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": ""}\n')
    assert cli_main(["label", "import-prompts", str(bad), "--project", "cli", *db]) == 2
    assert capsys.readouterr().err.strip() == f"instructkit: error: {bad}:2: field 'prompt': must not be empty"
    assert cli_main(["label", "export", "--project", "nope", "--kind", "rankings", "--out", str(out_file), *db]) == 2
    capsys.readouterr()
    assert cli_main(["label", "migrate", *db]) == 0
    assert capsys.readouterr().out.strip().endswith(f"is at schema revision {D.HEAD}")


def test_admin_pages_create_configure_and_fill_a_project(site, tmp_path):
    with site.browser_like() as c:
        csrf = login(c, "root")
        r = c.post("/admin/projects", data={"csrf_token": csrf, "name": "paged", "overlap": "2", "k_min": "3",
                                            "k_max": "5"})
        assert r.status_code == 303
        pid = _project_id(site, "paged")
        r = c.post(f"/admin/projects/{pid}/import", data={"csrf_token": csrf, "what": "prompts", "demonstrations": "1"},
                   files={"file": ("p.jsonl", b'{"prompt": "one"}\n{"prompt": "two"}\n', "application/x-ndjson")})
        assert r.status_code == 303 and "Imported 2 prompts" in r.headers["location"].replace("%20", " ")
        outputs = "".join(json.dumps({"prompt": "one", "completion": t, "model": m}) + "\n"
                          for t, m in (("1", "a"), ("uno", "b"), ("one!", "a")))
        r = c.post(f"/admin/projects/{pid}/import", data={"csrf_token": csrf, "what": "outputs"},
                   files={"file": ("o.jsonl", outputs.encode(), "application/x-ndjson")})
        assert r.status_code == 303
        r = c.post(f"/admin/projects/{pid}/tasks", data={"csrf_token": csrf, "kind": "comparison", "model_a": "a",
                                                          "model_b": "b"})
        assert "Created 1 comparison tasks" in r.headers["location"].replace("%20", " ")
        r = c.post(f"/admin/projects/{pid}/settings", data={
            "csrf_token": csrf, "settings_form": "1", "overlap": "3", "k_min": "3", "k_max": "5",
            "flags": "hallucination, harmful_advice", "instructions": "Be kind.", "template": "plain"})
        assert r.status_code == 303
        page = c.get(f"/admin/projects/{pid}")
        assert page.status_code == 200 and "3 outputs from a, b" in page.text
        bad = c.post(f"/admin/projects/{pid}/import", data={"csrf_token": csrf, "what": "prompts"},
                     files={"file": ("bad.jsonl", b'{"prompt": "three"}\n{"prompt": 3}\n', "application/x-ndjson")})
        assert bad.status_code == 422 and "bad.jsonl:2: field &#39;prompt&#39;" in bad.text
        assert c.post("/admin/users", data={"csrf_token": csrf, "username": "dee", "password": "short"}).status_code == 422
        assert c.post("/admin/users", data={"csrf_token": csrf, "username": "dee", "password": PASSWORD,
                                            "role": "labeler"}).status_code == 303
        uid = next(u.id for u in _users(site) if u.username == "dee")
        r = c.post(f"/admin/users/{uid}/token", data={"csrf_token": csrf})
        token = re.search(r'id="new-token">([^<]+)<', c.get(r.headers["location"]).text).group(1)
        assert c.get("/admin").text.count('id="new-token"') == 0  # shown once
    with httpx.Client(base_url=site.url, headers={"Authorization": f"Bearer {token}"}) as dee:
        assert dee.get("/api/v1/me").json() == {"username": "dee", "role": "labeler"}
        task = dee.get("/api/v1/projects/paged/next?kind=demonstration").json()
        dee.put(f"/api/v1/assignments/{task['assignment']}/label", json={"completion": "<i>my</i> answer"})
    with site.browser_like() as c:  # review on the page: the demonstration is shown as text, then rejected
        csrf = login(c, "root")
        page = c.get(f"/admin/projects/{pid}/review")
        assert "&lt;i&gt;my&lt;/i&gt; answer" in page.text
        label_id = int(re.search(r'action="/admin/labels/(\d+)/review"', page.text).group(1))
        r = c.post(f"/admin/labels/{label_id}/review", data={"csrf_token": csrf, "status": "rejected",
                                                             "note": "too short"})
        assert r.status_code == 303
        assert c.get(f"/admin/projects/{pid}/quality").status_code == 200
    with httpx.Client(base_url=site.url, headers={"Authorization": f"Bearer {token}"}) as dee:
        (mine,) = dee.get("/api/v1/labels?project=paged").json()
        assert (mine["review"], mine["note"]) == ("rejected", "too short")
    with site.api("root") as admin:
        p = next(p for p in admin.get("/api/v1/projects").json() if p["name"] == "paged")
        assert (p["overlap"], p["flags"], p["instructions"]) == (3, ["hallucination", "harmful_advice"], "Be kind.")


def _users(site: Site):
    with site.app.state.sessions() as db:
        return db.scalars(select(D.User)).all()


def test_generate_k_outputs_per_prompt_from_two_models(site, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from instructkit.config import ModelInit
    from instructkit.models import new_model, save_model, train_tokenizer

    tok = train_tokenizer([f"say {w} {i} : the {w} is good" for w in ("cat", "dog", "sun") for i in range(20)],
                          vocab_size=300)
    dirs = []
    for seed in (0, 1):
        model = new_model(ModelInit(family="gpt2", d_model=16, n_layers=1, n_heads=2, max_len=64), tok, seed=seed)
        save_model(model, tok, tmp_path / f"lm{seed}")
        dirs.append(str(tmp_path / f"lm{seed}"))
    del torch
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"say {w} 1 :"}) + "\n" for w in ("cat", "dog", "sun")))
    db = ["--db", site.db_url]
    assert cli_main(["label", "project", "create", "gen", "--k", "4..6", *db]) == 0
    assert cli_main(["label", "import-prompts", str(prompts), "--project", "gen", *db]) == 0
    assert cli_main(["label", "generate", "--project", "gen", "--models", ",".join(dirs), "--max-new-tokens", "6",
                     "--temperatures", "1.0,0.7", *db]) == 0
    assert '"tasks": 3' in capsys.readouterr().out
    with site.app.state.sessions() as s:
        pid = _project_id(site, "gen")
        tasks = s.scalars(select(D.Task).where(D.Task.project_id == pid)).all()
        assert len(tasks) == 3 and all(4 <= len(t.output_ids) <= 6 for t in tasks)
        models = s.scalars(select(D.Output.model).join(D.Prompt).where(D.Prompt.project_id == pid)).all()
        assert set(models) == {"lm0", "lm1"}
    # a prompt with outputs is not sampled again
    assert cli_main(["label", "generate", "--project", "gen", "--models", dirs[0], *db]) == 0
    assert '"outputs": 0' in capsys.readouterr().out
    # the same through the API (the admin page starts the same background job)
    with site.api("root") as admin:
        admin.post("/api/v1/projects", json={"name": "gen-api", "k_min": 2, "k_max": 2})
        admin.post("/api/v1/projects/gen-api/prompts", json={"records": [{"prompt": "say cat 2 :"}]})
        r = admin.post("/api/v1/projects/gen-api/generate", json={"models": [dirs[1], "/no/such/model"]})
        assert r.status_code == 422 and "not a model directory" in r.json()["error"]
        job = admin.post("/api/v1/projects/gen-api/generate", json={"models": [dirs[1]], "max_new_tokens": 4}).json()
        for _ in range(600):
            state = admin.get(f"/api/v1/jobs/{job['job']}").json()
            if state["status"] != "running":
                break
            time.sleep(0.05)
        assert state["status"] == "done" and state["result"]["tasks"] == 1, state
        task = admin.get("/api/v1/projects/gen-api/next?kind=ranking").json()
        assert task["k"] == 2


def test_sandbox_simulated_labelers_work_through_the_api(site, tmp_path, capsys):
    from instructkit.sandbox.world import World

    world_dir = tmp_path / "world"
    World.build("tiny", 0).save(world_dir)
    demos = [json.loads(line) for line in (world_dir / "demonstrations.jsonl").read_text().splitlines()[:6]]
    records = [{"prompt": d["prompt"], "completions": [d["completion"], demos[(i + 1) % 6]["completion"],
                                                       "I don't know.", d["completion"] + " " + d["completion"]]}
               for i, d in enumerate(demos)]
    make_project(site, "sim", records, overlap=3, k_min=4, k_max=4,
                 flags=["fails_instruction", "hallucination", "constraint_satisfied", "inappropriate",
                        "harmful_advice", "toxic"])
    tokens = tmp_path / "tokens.txt"
    with site.app.state.sessions() as db:
        tokens.write_text("\n".join(S.create_token(db, S.create_user(db, f"sim-{i}", None), "sim") for i in range(3)))
        db.commit()
    assert cli_main(["label", "simulate", "--url", site.url, "--project", "sim", "--world", str(world_dir),
                     "--tokens", str(tokens)]) == 0
    assert "18 labels by 3 labelers" in capsys.readouterr().out
    with site.api("root") as admin:
        q = admin.get("/api/v1/projects/sim/quality").json()
        text = admin.get("/api/v1/projects/sim/export?kind=rankings").text
    assert q["ranking"]["overlapping_items"] == 6 and 0 <= q["ranking"]["agreement"] <= 1
    (tmp_path / "sim.jsonl").write_text(text)
    recs = datalib.load(tmp_path / "sim.jsonl", "ranking")
    assert len(recs) == 18 and {r.labeler for r in recs} == {"sim-0", "sim-1", "sim-2"}
    assert all(set(f) == {"fails_instruction", "hallucination", "constraint_satisfied", "inappropriate",
                          "harmful_advice", "toxic"} for r in recs for f in r.flags)
