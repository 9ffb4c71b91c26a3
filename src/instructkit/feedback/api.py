"""The JSON API under /api/v1: everything a labeler does on the pages, for scripts, AI labelers and
the sandbox's simulated labelers (`Authorization: Bearer TOKEN`), plus the admin's operations.

  GET  /api/v1/me                                  who the token belongs to
  GET  /api/v1/projects                            projects, with this labeler's progress
  GET  /api/v1/projects/{p}/next?kind=ranking      the next task (assigns it); 204 when none is left
  GET  /api/v1/assignments/{a}                     a task of mine, with my answer if any
  PUT  /api/v1/assignments/{a}/label?next=1        answer (again: replaces); optionally get the next task
  POST /api/v1/assignments/{a}/skip
  GET  /api/v1/labels?project=p                    my answers
  admin: POST /projects, PATCH /projects/{p}, POST /projects/{p}/prompts | outputs | tasks | generate,
         GET /projects/{p}/export?kind=rankings, GET /projects/{p}/quality, GET /projects/{p}/review,
         POST /labels/{l}/review, POST /users, POST /users/{name}/tokens, GET /jobs/{id}
`{p}` is a project id or name. Errors are {"error": message, "field"?: name} with a 4xx status."""
from __future__ import annotations

import json

from fastapi import APIRouter, Body, Depends, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from instructkit.feedback import security as S
from instructkit.feedback import service as svc
from instructkit.feedback.app import Auth, check_csrf, current_auth, get_db
from instructkit.feedback.db import Project, Task, User
from instructkit.feedback.labels import LabelError

router = APIRouter(prefix="/api/v1")


def api_auth(request: Request, auth: Auth = Depends(current_auth)) -> Auth:
    check_csrf(request, auth, None)  # cookie-authenticated API calls need the X-CSRF-Token header
    return auth


def api_admin(auth: Auth = Depends(api_auth)) -> Auth:
    if not auth.user.is_admin:
        raise svc.Forbidden("admins only")
    return auth


def _project_json(p: Project) -> dict:
    return {"id": p.id, "name": p.name, "instructions": p.instructions, "overlap": p.overlap, "k_min": p.k_min,
            "k_max": p.k_max, "flags": list(p.flags), "require_likert": p.require_likert, "template": p.template}


def _records(body, what: str) -> list[tuple[dict, str, int]]:
    records = body.get("records") if isinstance(body, dict) else body
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise LabelError(f"expected {{\"records\": [{what} objects]}}", "records")
    return [(r, "records", i) for i, r in enumerate(records, start=1)]


@router.get("/me")
def me(auth: Auth = Depends(api_auth)):
    return {"username": auth.user.username, "role": auth.user.role}


@router.get("/projects")
def projects(auth: Auth = Depends(api_auth), db: Session = Depends(get_db)):
    return [{**_project_json(p), "progress": svc.progress(db, p, auth.user)}
            for p in db.scalars(select(Project).order_by(Project.id))]


@router.get("/projects/{ref}/progress")
def project_progress(ref: str, kind: str | None = None, auth: Auth = Depends(api_auth), db: Session = Depends(get_db)):
    return svc.progress(db, svc.get_project(db, ref), auth.user, kind)


@router.get("/projects/{ref}/next")
def next_task(ref: str, kind: str | None = None, auth: Auth = Depends(api_auth), db: Session = Depends(get_db)):
    a = svc.next_assignment(db, svc.get_project(db, ref), auth.user, kind)
    if a is None:
        return Response(status_code=204)
    view = svc.assignment_view(db, a)
    db.commit()
    return view


@router.get("/assignments/{aid}")
def assignment(aid: int, auth: Auth = Depends(api_auth), db: Session = Depends(get_db)):
    return svc.assignment_view(db, svc.get_assignment(db, aid, auth.user))


@router.put("/assignments/{aid}/label")
def put_label(aid: int, body=Body(...), next: int = 0, auth: Auth = Depends(api_auth),
              db: Session = Depends(get_db)):
    a = svc.get_assignment(db, aid, auth.user, write=True)
    label, created = svc.submit(db, a, auth.user, body)
    out = {"label": label.id, "created": created, "assignment": a.id}
    if next:
        task = db.get(Task, a.task_id)
        nxt = svc.next_assignment(db, db.get(Project, task.project_id), auth.user, task.kind)
        out["next"] = svc.assignment_view(db, nxt) if nxt is not None else None
    db.commit()
    return JSONResponse(out, status_code=201 if created else 200)


@router.post("/assignments/{aid}/skip")
def skip(aid: int, auth: Auth = Depends(api_auth), db: Session = Depends(get_db)):
    svc.skip(db, svc.get_assignment(db, aid, auth.user, write=True), auth.user)
    db.commit()
    return {"skipped": aid}


@router.get("/labels")
def my_labels(project: str | None = None, auth: Auth = Depends(api_auth), db: Session = Depends(get_db)):
    p = svc.get_project(db, project) if project else None
    return svc.my_work(db, auth.user, p)


# ----------------------------------------------------------------------------- admin

@router.post("/projects", status_code=201)
def create_project(body=Body(...), auth: Auth = Depends(api_admin), db: Session = Depends(get_db)):
    if not isinstance(body, dict):
        raise LabelError("expected a JSON object with a name and settings")
    settings = dict(body)
    p = svc.create_project(db, settings.pop("name", None), **settings)
    db.commit()
    return _project_json(p)


@router.patch("/projects/{ref}")
def update_project(ref: str, body=Body(...), auth: Auth = Depends(api_admin), db: Session = Depends(get_db)):
    if not isinstance(body, dict):
        raise LabelError("expected a JSON object of settings")
    p = svc.update_project(db, svc.get_project(db, ref), body)
    db.commit()
    return _project_json(p)


@router.post("/projects/{ref}/prompts")
def import_prompts(ref: str, body=Body(...), auth: Auth = Depends(api_admin), db: Session = Depends(get_db)):
    p = svc.get_project(db, ref)
    out = svc.import_prompts(db, p, _records(body, "{\"prompt\"}"))
    for kind in (body.get("tasks") or []) if isinstance(body, dict) else []:
        out.setdefault("tasks", {})[kind] = svc.make_tasks(db, p, kind)
    db.commit()
    return out


@router.post("/projects/{ref}/outputs")
def import_outputs(ref: str, body=Body(...), auth: Auth = Depends(api_admin), db: Session = Depends(get_db)):
    out = svc.import_outputs(db, svc.get_project(db, ref), _records(body, "output"))
    db.commit()
    return out


@router.post("/projects/{ref}/tasks")
def make_tasks(ref: str, body=Body(...), auth: Auth = Depends(api_admin), db: Session = Depends(get_db)):
    if not isinstance(body, dict):
        raise LabelError("expected {\"kind\": ..., \"models\"?: [A, B]}")
    n = svc.make_tasks(db, svc.get_project(db, ref), body.get("kind"), body.get("models"))
    db.commit()
    return {"created": n}


@router.post("/projects/{ref}/generate", status_code=202)
def generate(ref: str, request: Request, body=Body(...), auth: Auth = Depends(api_admin),
             db: Session = Depends(get_db)):
    from instructkit.feedback.generate import start_job

    p = svc.get_project(db, ref)
    if not isinstance(body, dict):
        raise LabelError("expected {\"models\": [dirs], \"k\"?, \"temperatures\"?, \"max_new_tokens\"?, \"seed\"?}")
    return {"job": start_job(request.app, p.id, body)}


@router.get("/jobs/{job_id}")
def job(job_id: str, request: Request, auth: Auth = Depends(api_admin)):
    j = request.app.state.jobs.get(job_id)
    if j is None:
        raise svc.NotFound(f"no job {job_id}")
    return j


@router.get("/projects/{ref}/export")
def export(ref: str, kind: str = "rankings", include_rejected: int = 0, auth: Auth = Depends(api_admin),
           db: Session = Depends(get_db)):
    p = svc.get_project(db, ref)
    records = svc.export_records(db, p, kind, include_rejected=bool(include_rejected))
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return Response(text, media_type="application/x-ndjson", headers={
        "Content-Disposition": f'attachment; filename="{p.id}-{kind}.jsonl"'})


@router.get("/projects/{ref}/quality")
def quality(ref: str, auth: Auth = Depends(api_admin), db: Session = Depends(get_db)):
    return svc.quality(db, svc.get_project(db, ref))


@router.get("/projects/{ref}/review")
def review_list(ref: str, status: str | None = "pending", auth: Auth = Depends(api_admin),
                db: Session = Depends(get_db)):
    return svc.labels_for_review(db, svc.get_project(db, ref), status or None)


@router.post("/labels/{label_id}/review")
def review(label_id: int, body=Body(...), auth: Auth = Depends(api_admin), db: Session = Depends(get_db)):
    if not isinstance(body, dict):
        raise LabelError("expected {\"status\": accepted|rejected, \"note\"?}")
    label = svc.review(db, label_id, auth.user, body.get("status"), body.get("note", ""))
    db.commit()
    return {"label": label.id, "review_status": label.review_status}


@router.get("/projects/{ref}/labels/count")
def label_count(ref: str, auth: Auth = Depends(api_admin), db: Session = Depends(get_db)):
    return svc.counts_by_labeler(db, svc.get_project(db, ref))


@router.post("/users", status_code=201)
def create_user(body=Body(...), auth: Auth = Depends(api_admin), db: Session = Depends(get_db)):
    if not isinstance(body, dict):
        raise LabelError("expected {\"username\", \"password\", \"role\"}")
    user = S.create_user(db, body.get("username"), body.get("password"), body.get("role", "labeler"))
    db.commit()
    return {"username": user.username, "role": user.role}


@router.post("/users/{username}/tokens", status_code=201)
def create_token(username: str, body=Body(default=None), auth: Auth = Depends(api_admin),
                 db: Session = Depends(get_db)):
    user = db.scalar(select(User).where(User.username == username))
    if user is None:
        raise svc.NotFound(f"no user {username!r}")
    name = body.get("name", "api") if isinstance(body, dict) else "api"
    token = S.create_token(db, user, str(name))
    db.commit()
    return {"username": username, "token": token}

