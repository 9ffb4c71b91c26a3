"""Server-rendered pages: login, the labeler's queue, the three task pages, "my work", and the admin
pages (projects, users, imports, generation, quality, review, export). Every POST carries the
session's CSRF token; every page form ends in the same service functions as the JSON API."""
from __future__ import annotations

import io
import json
import secrets
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from instructkit.errors import InputError
from instructkit.feedback import security as S
from instructkit.feedback import service as svc
from instructkit.feedback.app import (LOGIN_CSRF_COOKIE, SESSION_COOKIE, Auth, check_csrf, current_auth, form_data,
                                      get_db)
from instructkit.feedback.db import Project, Task, User
from instructkit.feedback.labels import KINDS, TABLE3_FLAGS, LabelError, flag_keys

router = APIRouter()
LETTERS = "ABCDEFGHI"


def render(request: Request, name: str, ctx: dict, status: int = 200):
    auth = ctx.get("auth")
    base = {"user": auth.user if auth else None, "csrf": auth.session.csrf if auth and auth.session else "",
            "msg": request.query_params.get("msg", "")}
    return request.app.state.templates.TemplateResponse(request, name, {**base, **ctx}, status_code=status)


def redirect(url: str, msg: str | None = None) -> RedirectResponse:
    if msg:
        url += ("&" if "?" in url else "?") + "msg=" + quote(msg)
    return RedirectResponse(url, status_code=303)


def page_auth(request: Request, form=Depends(form_data), auth: Auth = Depends(current_auth)) -> Auth:
    if request.method == "POST":
        check_csrf(request, auth, form.get("csrf_token"))
    return auth


def page_admin(auth: Auth = Depends(page_auth)) -> Auth:
    if not auth.user.is_admin:
        raise HTTPException(403, "admins only")
    return auth


def _safe_next(url: str | None) -> str:
    """Only same-site paths after login (no open redirect)."""
    if not url or not url.startswith("/") or url.startswith("//") or urlsplit(url).netloc:
        return "/"
    return url


# ----------------------------------------------------------------------------- login

@router.get("/login")
def login_form(request: Request, next: str = "/"):
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    response = render(request, "login.html", {"login_csrf": token, "next": _safe_next(next)})
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict",
                        secure=request.app.state.secure_cookies)
    return response


@router.post("/login")
def login(request: Request, form=Depends(form_data), db: Session = Depends(get_db)):
    if not S.same(form.get("csrf_token"), request.cookies.get(LOGIN_CSRF_COOKIE)):
        raise HTTPException(403, "CSRF token missing or invalid: reload the page and submit again")
    user = S.authenticate(db, str(form.get("username", "")), str(form.get("password", "")))
    if user is None:
        db.commit()
        return render(request, "login.html", {"login_csrf": request.cookies.get(LOGIN_CSRF_COOKIE),
                                              "next": _safe_next(form.get("next")),
                                              "error": "Unknown user or wrong password."}, status=401)
    token, _ = S.start_session(db, user)
    db.commit()
    response = redirect(_safe_next(form.get("next")))
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="lax", secure=request.app.state.secure_cookies,
                        max_age=S.SESSION_DAYS * 86400)
    response.delete_cookie(LOGIN_CSRF_COOKIE)
    return response


@router.post("/logout")
def logout(request: Request, auth: Auth = Depends(page_auth), db: Session = Depends(get_db)):
    S.end_session(db, request.cookies.get(SESSION_COOKIE))
    db.commit()
    response = redirect("/login")
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/")
def home(auth: Auth = Depends(page_auth)):
    return redirect("/admin" if auth.user.is_admin else "/queue")


# ----------------------------------------------------------------------------- labelers

@router.get("/queue")
def queue(request: Request, auth: Auth = Depends(page_auth), db: Session = Depends(get_db)):
    rows = []
    for p in db.scalars(select(Project).order_by(Project.id)):
        kinds = {k: svc.progress(db, p, auth.user, k) for k in KINDS}
        kinds = {k: v for k, v in kinds.items() if v["total"]}
        if kinds:
            rows.append({"project": p, "kinds": kinds})
    return render(request, "queue.html", {"auth": auth, "rows": rows})


@router.get("/projects/{pid}/next")
def next_page(request: Request, pid: int, kind: str | None = None, auth: Auth = Depends(page_auth),
              db: Session = Depends(get_db)):
    project = svc.get_project(db, pid)
    a = svc.next_assignment(db, project, auth.user, kind or None)
    db.commit()
    said = request.query_params.get("msg", "")
    if a is None:
        left = f"No {kind or ''} tasks left in {project.name}. Thank you!".replace("  ", " ")
        return redirect("/queue", f"{said} {left}".strip())
    return redirect(f"/task/{a.id}", said or None)


def _task_context(db: Session, a, auth: Auth) -> dict:
    view = svc.assignment_view(db, a)
    task = db.get(Task, a.task_id)
    project = db.get(Project, task.project_id)
    return {"auth": auth, "a": a, "view": view, "project": project, "label": view["label"],
            "k": view["k"], "letters": LETTERS, "flags": list(project.flags), "keys": flag_keys(list(project.flags)),
            "flag_text": {f: TABLE3_FLAGS.get(f, f.replace("_", " ").capitalize()) for f in project.flags},
            "progress": svc.progress(db, project, auth.user, task.kind),
            "readonly": a.labeler_id != auth.user.id}


@router.get("/task/{aid}")
def task_page(request: Request, aid: int, auth: Auth = Depends(page_auth), db: Session = Depends(get_db)):
    a = svc.get_assignment(db, aid, auth.user)
    ctx = _task_context(db, a, auth)
    return render(request, f"task_{ctx['view']['kind']}.html", ctx)


def _int_field(form, name: str) -> int | None:
    value = form.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise LabelError("expected a whole number", name) from None


def form_to_body(kind: str, form, k: int, flags: list[str]) -> dict:
    """A page's form fields -> the same JSON body the API takes."""
    body: dict = {}
    if form.get("seconds"):
        try:
            body["seconds"] = float(form.get("seconds"))
        except ValueError:
            pass
    if kind == "demonstration":
        body["completion"] = form.get("completion", "")
    elif kind == "comparison":
        body["choice"] = form.get("choice")
    else:
        body["not_rankable"] = form.get("not_rankable") == "1"
        ranks = [_int_field(form, f"rank_{i}") for i in range(k)]
        if any(r is None for r in ranks):
            if not body["not_rankable"]:
                raise LabelError("give every output a rank (or mark the item not rankable)", "ranks")
            ranks = None
        body["ranks"] = ranks
        likert = [_int_field(form, f"likert_{i}") for i in range(k)]
        missing = [LETTERS[i] for i, s in enumerate(likert) if s is None]
        body["likert"] = None if missing else likert
        if missing and len(missing) < k:
            raise LabelError(f"give output{'s' if len(missing) > 1 else ''} {', '.join(missing)} a 1-7 score", "likert")
        body["flags"] = [{f: form.get(f"flag_{i}_{f}") == "1" for f in flags} for i in range(k)]
    return body


@router.post("/task/{aid}")
def task_submit(request: Request, aid: int, form=Depends(form_data), auth: Auth = Depends(page_auth),
                db: Session = Depends(get_db)):
    a = svc.get_assignment(db, aid, auth.user, write=True)
    task = db.get(Task, a.task_id)
    project = db.get(Project, task.project_id)
    try:
        body = form_to_body(task.kind, form, len(task.output_ids), list(project.flags))
        _, created = svc.submit(db, a, auth.user, body)
    except LabelError as e:
        db.rollback()
        ctx = _task_context(db, a, auth)
        ctx["error"] = e.message if not e.field else f"{e.field}: {e.message}"
        return render(request, f"task_{task.kind}.html", ctx, status=422)
    db.commit()
    if form.get("then") == "mine" or not created:
        return redirect("/mine", "Saved your changes.")
    return redirect(f"/projects/{project.id}/next?kind={task.kind}", "Submitted.")


@router.post("/task/{aid}/skip")
def task_skip(aid: int, auth: Auth = Depends(page_auth), db: Session = Depends(get_db)):
    a = svc.get_assignment(db, aid, auth.user, write=True)
    task = db.get(Task, a.task_id)
    svc.skip(db, a, auth.user)
    db.commit()
    return redirect(f"/projects/{task.project_id}/next?kind={task.kind}", "Skipped.")


@router.get("/mine")
def mine(request: Request, auth: Auth = Depends(page_auth), db: Session = Depends(get_db)):
    return render(request, "mine.html", {"auth": auth, "rows": svc.my_work(db, auth.user)})


# ----------------------------------------------------------------------------- admin

@router.get("/admin")
def admin(request: Request, auth: Auth = Depends(page_admin), db: Session = Depends(get_db)):
    projects = [(p, svc.project_stats(db, p)) for p in db.scalars(select(Project).order_by(Project.id))]
    users = list(db.scalars(select(User).order_by(User.id)))
    token = request.cookies.get("ik_new_token")
    response = render(request, "admin.html", {"auth": auth, "projects": projects, "users": users,
                                              "new_token": token})
    if token:
        response.delete_cookie("ik_new_token", path="/admin")
    return response


@router.post("/admin/projects")
def admin_create_project(form=Depends(form_data), auth: Auth = Depends(page_admin), db: Session = Depends(get_db)):
    settings = _settings_from_form(form)
    p = svc.create_project(db, form.get("name", ""), **settings)
    db.commit()
    return redirect(f"/admin/projects/{p.id}", f"Created project {p.name}.")


def _settings_from_form(form) -> dict:
    settings: dict = {}
    for name in ("overlap", "k_min", "k_max"):
        v = _int_field(form, name)
        if v is not None:
            settings[name] = v
    if form.get("flags") is not None and form.get("flags").strip():
        settings["flags"] = [f.strip() for f in form.get("flags").replace("\n", ",").split(",") if f.strip()]
    if form.get("instructions") is not None:
        settings["instructions"] = form.get("instructions")
    if form.get("template"):
        settings["template"] = form.get("template")
    if form.get("settings_form"):
        settings["require_likert"] = form.get("require_likert") == "1"
    return settings


@router.get("/admin/projects/{pid}")
def admin_project(request: Request, pid: int, auth: Auth = Depends(page_admin), db: Session = Depends(get_db)):
    p = svc.get_project(db, pid)
    jobs = [j for j in request.app.state.jobs.values() if j["project"] == p.id]
    return render(request, "project.html", {"auth": auth, "p": p, "stats": svc.project_stats(db, p), "jobs": jobs,
                                            "all_flags": TABLE3_FLAGS})


@router.post("/admin/projects/{pid}/settings")
def admin_settings(pid: int, form=Depends(form_data), auth: Auth = Depends(page_admin), db: Session = Depends(get_db)):
    p = svc.update_project(db, svc.get_project(db, pid), _settings_from_form(form))
    db.commit()
    return redirect(f"/admin/projects/{p.id}", "Settings saved.")


@router.post("/admin/projects/{pid}/import")
def admin_import(pid: int, form=Depends(form_data), auth: Auth = Depends(page_admin), db: Session = Depends(get_db)):
    p = svc.get_project(db, pid)
    upload = form.get("file")
    if upload is None or not hasattr(upload, "file"):
        raise LabelError("choose a JSONL file to import", "file")
    name = upload.filename or "upload.jsonl"
    records = []
    for line, raw in enumerate(io.TextIOWrapper(upload.file, encoding="utf-8", errors="strict"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"malformed JSON: {getattr(e, 'msg', e)}", path=name, line=line) from None
        if not isinstance(obj, dict):
            raise InputError("expected a JSON object", path=name, line=line)
        records.append((obj, name, line))
    if form.get("what") == "outputs":
        out = svc.import_outputs(db, p, records)
        msg = f"Imported {out['outputs']} outputs ({out['prompts_added']} new prompts, {out['tasks']} ranking tasks)."
    else:
        out = svc.import_prompts(db, p, records)
        msg = f"Imported {out['added']} prompts ({out['existing']} already present)."
        if form.get("demonstrations") == "1":
            msg += f" {svc.make_tasks(db, p, 'demonstration')} demonstration tasks."
    db.commit()
    return redirect(f"/admin/projects/{p.id}", msg)


@router.post("/admin/projects/{pid}/tasks")
def admin_tasks(pid: int, form=Depends(form_data), auth: Auth = Depends(page_admin), db: Session = Depends(get_db)):
    p = svc.get_project(db, pid)
    kind = form.get("kind")
    models = [form.get("model_a"), form.get("model_b")] if kind == "comparison" else None
    n = svc.make_tasks(db, p, kind, models)
    db.commit()
    return redirect(f"/admin/projects/{p.id}", f"Created {n} {kind} tasks.")


@router.post("/admin/projects/{pid}/generate")
def admin_generate(request: Request, pid: int, form=Depends(form_data), auth: Auth = Depends(page_admin),
                   db: Session = Depends(get_db)):
    from instructkit.feedback.generate import start_job

    p = svc.get_project(db, pid)
    opts = {k: form.get(k) for k in ("models", "k", "temperatures", "max_new_tokens", "seed") if form.get(k)}
    job = start_job(request.app, p.id, opts)
    return redirect(f"/admin/projects/{p.id}", f"Generation started (job {job}); reload to follow it.")


@router.get("/admin/projects/{pid}/quality")
def admin_quality(request: Request, pid: int, auth: Auth = Depends(page_admin), db: Session = Depends(get_db)):
    p = svc.get_project(db, pid)
    return render(request, "quality.html", {"auth": auth, "p": p, "q": svc.quality(db, p)})


@router.get("/admin/projects/{pid}/review")
def admin_review(request: Request, pid: int, status: str = "pending", auth: Auth = Depends(page_admin),
                 db: Session = Depends(get_db)):
    p = svc.get_project(db, pid)
    rows = svc.labels_for_review(db, p, status if status != "all" else None)
    return render(request, "review.html", {"auth": auth, "p": p, "rows": rows, "status": status,
                                           "letters": LETTERS})


@router.post("/admin/labels/{label_id}/review")
def admin_review_post(label_id: int, form=Depends(form_data), auth: Auth = Depends(page_admin),
                      db: Session = Depends(get_db)):
    label = svc.review(db, label_id, auth.user, form.get("status"), form.get("note", ""))
    task = db.get(Task, label.task_id)
    db.commit()
    return redirect(f"/admin/projects/{task.project_id}/review", f"Label {label_id} {label.review_status}.")


@router.get("/admin/projects/{pid}/export")
def admin_export(pid: int, kind: str = "rankings", auth: Auth = Depends(page_admin), db: Session = Depends(get_db)):
    p = svc.get_project(db, pid)
    records = svc.export_records(db, p, kind)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return Response(text, media_type="application/x-ndjson",
                    headers={"Content-Disposition": f'attachment; filename="{kind}.jsonl"'})


@router.post("/admin/users")
def admin_create_user(form=Depends(form_data), auth: Auth = Depends(page_admin), db: Session = Depends(get_db)):
    user = S.create_user(db, form.get("username", ""), form.get("password", ""), form.get("role", "labeler"))
    db.commit()
    return redirect("/admin", f"Created {user.role} {user.username}.")


@router.post("/admin/users/{uid}/token")
def admin_token(request: Request, uid: int, auth: Auth = Depends(page_admin), db: Session = Depends(get_db)):
    user = db.get(User, uid)
    if user is None:
        raise svc.NotFound(f"no user {uid}")
    token = S.create_token(db, user, "admin page")
    db.commit()
    # shown once on the next page; a short-lived cookie keeps it out of URLs and logs
    response = redirect("/admin", f"New API token for {user.username} (shown once below).")
    response.set_cookie("ik_new_token", token, max_age=60, httponly=True, samesite="strict", path="/admin",
                        secure=request.app.state.secure_cookies)
    return response


@router.post("/admin/users/{uid}/active")
def admin_toggle_user(uid: int, auth: Auth = Depends(page_admin), db: Session = Depends(get_db)):
    user = db.get(User, uid)
    if user is None:
        raise svc.NotFound(f"no user {uid}")
    if user.id == auth.user.id:
        raise LabelError("you cannot deactivate yourself", "user")
    user.active = not user.active
    db.commit()
    return redirect("/admin", f"{user.username} is now {'active' if user.active else 'deactivated'}.")
