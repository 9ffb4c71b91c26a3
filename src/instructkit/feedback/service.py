"""The labeling app's operations, shared by the pages, the JSON API and the CLI: projects, imports,
tasks, the labeler queue with overlap, submissions, review, quality figures and the export.

Every function takes an open SQLAlchemy session and leaves committing to the caller, so one request
is one transaction: a refused submission or a bad import line changes nothing."""
from __future__ import annotations

import random
from collections import defaultdict

from sqlalchemy import and_, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from instructkit.data.records import parse_demonstration, parse_prompt, parse_ranking
from instructkit.errors import InputError
from instructkit.feedback import agreement as A
from instructkit.feedback.db import Assignment, Label, Output, Project, Prompt, Task, User, text_hash, utcnow
from instructkit.feedback.labels import (KINDS, MAX_K, MIN_K, TABLE3_FLAGS, LabelError, check_flag_names,
                                         validate)

MAX_OVERLAP = 50
GOLD_THRESHOLD = 0.7  # gold accuracy under which a labeler is flagged for screening


class NotFound(LookupError):
    pass


class Forbidden(PermissionError):
    pass


# ----------------------------------------------------------------------------- projects

def get_project(db: Session, ref: int | str) -> Project:
    """By id or by name."""
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        project = db.get(Project, int(ref))
    else:
        project = db.scalar(select(Project).where(Project.name == ref))
    if project is None:
        raise NotFound(f"no project {ref!r}")
    return project


def _apply_settings(project: Project, settings: dict) -> None:
    known = {"instructions", "overlap", "k_min", "k_max", "flags", "require_likert", "template"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise LabelError(f"unknown setting; expected one of {', '.join(sorted(known))}", unknown[0])
    if "instructions" in settings:
        if not isinstance(settings["instructions"], str) or len(settings["instructions"]) > 20_000:
            raise LabelError("expected text of at most 20000 characters", "instructions")
        project.instructions = settings["instructions"]
    for name, lo, hi in (("overlap", 1, MAX_OVERLAP), ("k_min", MIN_K, MAX_K), ("k_max", MIN_K, MAX_K)):
        if name in settings:
            v = settings[name]
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise LabelError(f"expected an integer from {lo} to {hi}", name)
            setattr(project, name, v)
    if project.k_min > project.k_max:
        raise LabelError(f"k_min ({project.k_min}) must not exceed k_max ({project.k_max})", "k_min")
    if "flags" in settings:
        project.flags = check_flag_names(settings["flags"])
    if "require_likert" in settings:
        if not isinstance(settings["require_likert"], bool):
            raise LabelError("expected true or false", "require_likert")
        project.require_likert = settings["require_likert"]
    if "template" in settings:
        if settings["template"] not in ("plain", "chat"):
            raise LabelError("expected plain or chat", "template")
        project.template = settings["template"]


def create_project(db: Session, name: str, **settings) -> Project:
    if not isinstance(name, str) or not name.strip() or len(name) > 100 or name.strip().isdigit():
        raise LabelError("expected a name of 1-100 characters (not only digits)", "name")
    name = name.strip()
    if db.scalar(select(Project).where(Project.name == name)) is not None:
        raise LabelError(f"project {name!r} already exists", "name")
    project = Project(name=name, instructions="", overlap=1, k_min=4, k_max=9, flags=list(TABLE3_FLAGS),
                      require_likert=True, template="plain")
    _apply_settings(project, settings)
    db.add(project)
    db.flush()
    return project


def update_project(db: Session, project: Project, settings: dict) -> Project:
    _apply_settings(project, settings)
    db.flush()
    return project


# ----------------------------------------------------------------------------- imports

RECORD_FIELDS = {"prompt", "completion", "completions", "model", "models", "ranks", "labeler", "likert", "flags",
                 "not_rankable", "gold"}


def _prompts_by_text(db: Session, project: Project, texts: list[str], metas: list[dict]) -> tuple[list[Prompt], int]:
    """Get or create a prompt per text (one row per distinct text). -> (prompts, how many were new)."""
    hashes = [text_hash(t) for t in texts]
    existing = {p.text_hash: p for p in db.scalars(select(Prompt).where(
        Prompt.project_id == project.id, Prompt.text_hash.in_(set(hashes))))} if hashes else {}
    added = 0
    out = []
    for text, h, meta in zip(texts, hashes, metas):
        if h not in existing:
            existing[h] = Prompt(project_id=project.id, text=text, text_hash=h, meta=meta)
            db.add(existing[h])
            added += 1
        out.append(existing[h])
    db.flush()
    return out, added


def import_prompts(db: Session, project: Project, records: list[tuple[dict, str, int]]) -> dict:
    """records: (object, source name, line). All or nothing; a prompt already present is counted, not
    duplicated. -> {"added", "existing"}"""
    parsed = [parse_prompt(obj, src, line) for obj, src, line in records]
    if not parsed:
        raise InputError("no prompt records")
    _, added = _prompts_by_text(db, project, [p.prompt for p in parsed], [p.meta for p in parsed])
    return {"added": added, "existing": len(parsed) - added}


def import_outputs(db: Session, project: Project, records: list[tuple[dict, str, int]]) -> dict:
    """Model outputs, two forms (all or nothing):
      {"prompt", "completions": [K strings], "models"?: [K names], "ranks"?: gold}  -> one ranking task
      {"prompt", "completion", "model"?}                                          -> one more output
    A K-way record with `ranks` becomes a gold item: the known answer labelers are screened on.
    -> {"prompts_added", "outputs", "tasks"}"""
    groups, singles = [], []
    for obj, src, line in records:
        if "completions" in obj:
            if "ranks" in obj:
                r = parse_ranking(obj, src, line)
                comps, gold = r.completions, {"ranks": list(r.ranks)}
            else:
                comps = obj["completions"]
                if not isinstance(comps, list) or not all(isinstance(c, str) for c in comps):
                    raise InputError("expected a list of strings", path=src, line=line, field="completions")
                gold = None
            if not MIN_K <= len(comps) <= MAX_K:
                raise InputError(f"expected {MIN_K} to {MAX_K} completions, got {len(comps)}", path=src, line=line,
                                 field="completions")
            models = obj.get("models", [obj.get("model", "")] * len(comps))
            if (not isinstance(models, list) or len(models) != len(comps)
                    or not all(isinstance(m, str) and len(m) <= 200 for m in models)):
                raise InputError(f"expected {len(comps)} model names", path=src, line=line, field="models")
            prompt = parse_prompt({"prompt": obj.get("prompt")}, src, line).prompt
            groups.append((prompt, comps, models, gold, {k: v for k, v in obj.items() if k not in RECORD_FIELDS}))
        elif "completion" in obj:
            d = parse_demonstration({"prompt": obj.get("prompt"), "completion": obj["completion"]}, src, line)
            model = obj.get("model", "")
            if not isinstance(model, str) or len(model) > 200:
                raise InputError("expected a model name (at most 200 characters)", path=src, line=line, field="model")
            if not d.prompt.strip():
                raise InputError("must not be empty", path=src, line=line, field="prompt")
            singles.append((d.prompt, d.completion, model, {k: v for k, v in obj.items() if k not in RECORD_FIELDS}))
        else:
            raise InputError("expected {\"prompt\", \"completions\": [...]} or {\"prompt\", \"completion\"}",
                             path=src, line=line, field="completions")
    if not groups and not singles:
        raise InputError("no output records")
    texts = [g[0] for g in groups] + [s[0] for s in singles]
    metas = [g[4] for g in groups] + [s[3] for s in singles]
    prompts, added = _prompts_by_text(db, project, texts, metas)
    n_out = n_tasks = 0
    for prompt, (_, comps, models, gold, _) in zip(prompts[:len(groups)], groups):
        outs = [Output(prompt_id=prompt.id, text=c, model=m) for c, m in zip(comps, models)]
        db.add_all(outs)
        db.flush()
        n_out += len(outs)
        if db.scalar(select(Task.id).where(Task.project_id == project.id, Task.prompt_id == prompt.id,
                                           Task.key == "ranking")) is None:
            db.add(Task(project_id=project.id, prompt_id=prompt.id, kind="ranking", key="ranking",
                        output_ids=[o.id for o in outs], gold=gold))
            n_tasks += 1
    for prompt, (_, comp, model, _) in zip(prompts[len(groups):], singles):
        db.add(Output(prompt_id=prompt.id, text=comp, model=model))
        n_out += 1
    db.flush()
    return {"prompts_added": added, "outputs": n_out, "tasks": n_tasks}


def add_outputs(db: Session, prompt_id: int, texts: list[str], models: list[str]) -> None:
    db.add_all(Output(prompt_id=prompt_id, text=t, model=m) for t, m in zip(texts, models))


# ----------------------------------------------------------------------------- tasks

def make_tasks(db: Session, project: Project, kind: str, models: list[str] | None = None, seed: int = 0) -> int:
    """Create the missing tasks of `kind` for every prompt (idempotent). -> how many were created.
      demonstration: one per prompt;
      ranking: one per prompt with at least 2 outputs: up to k_max of them, in a shuffled order;
      comparison: one per prompt with an output of both `models` [A, B], sides shuffled."""
    if kind not in KINDS:
        raise LabelError(f"expected one of {', '.join(KINDS)}", "kind")
    if kind == "comparison":
        if not isinstance(models, list) or len(models) != 2 or models[0] == models[1] or not all(
                isinstance(m, str) for m in models):
            raise LabelError("a comparison needs two different model names [A, B]", "models")
        key = f"comparison:{models[0]}|{models[1]}"[:255]
    else:
        key = kind
    have = set(db.scalars(select(Task.prompt_id).where(Task.project_id == project.id, Task.key == key)))
    prompts = [p for p in db.scalars(select(Prompt).where(Prompt.project_id == project.id).order_by(Prompt.id))
               if p.id not in have]
    outputs = defaultdict(list)
    if kind != "demonstration" and prompts:
        for o in db.scalars(select(Output).join(Prompt).where(Prompt.project_id == project.id).order_by(Output.id)):
            outputs[o.prompt_id].append(o)
    created = 0
    for p in prompts:
        rng = random.Random(f"{seed}/{p.id}/{key}")
        if kind == "demonstration":
            ids = []
        elif kind == "ranking":
            outs = outputs[p.id][:project.k_max]
            if len(outs) < MIN_K:
                continue
            ids = [o.id for o in outs]
            rng.shuffle(ids)
        else:
            a = next((o for o in outputs[p.id] if o.model == models[0]), None)
            b = next((o for o in outputs[p.id] if o.model == models[1]), None)
            if a is None or b is None:
                continue
            ids = [a.id, b.id] if rng.random() < 0.5 else [b.id, a.id]
        db.add(Task(project_id=project.id, prompt_id=p.id, kind=kind, key=key, output_ids=ids, gold=None))
        created += 1
    db.flush()
    return created


def task_view(db: Session, task: Task) -> dict:
    """What a labeler sees: the prompt and the outputs in the order shown (no model names)."""
    prompt = db.get(Prompt, task.prompt_id)
    outs = {o.id: o for o in db.scalars(select(Output).where(Output.id.in_(task.output_ids)))} if task.output_ids else {}
    return {"task": task.id, "kind": task.kind, "prompt": prompt.text,
            "outputs": [outs[i].text for i in task.output_ids]}


# ----------------------------------------------------------------------------- the queue

def _kind_filter(kind: str | None):
    if kind is not None and kind not in KINDS:
        raise LabelError(f"expected one of {', '.join(KINDS)}", "kind")
    return [Task.kind == kind] if kind else []


def _taken(project: Project):
    """(task_id, n): how many of the project's task slots are held (pending or submitted)."""
    return (select(Assignment.task_id, func.count().label("n")).join(Task, Task.id == Assignment.task_id)
            .where(Task.project_id == project.id, Assignment.slot.is_not(None))
            .group_by(Assignment.task_id).subquery())


def next_assignment(db: Session, project: Project, user: User, kind: str | None = None) -> Assignment | None:
    """The labeler's next task: their oldest unfinished assignment, else a new one on the task that
    is closest to its `overlap` labelers (so overlapping labels, and agreement, come early). The
    per-task unique slot makes concurrent labelers safe on both databases."""
    where = _kind_filter(kind)
    mine_pending = db.scalar(select(Assignment).join(Task, Task.id == Assignment.task_id).where(
        Task.project_id == project.id, Assignment.labeler_id == user.id, Assignment.status == "pending",
        *where).order_by(Assignment.id).limit(1))
    if mine_pending is not None:
        return mine_pending
    taken = _taken(project)
    n = func.coalesce(taken.c.n, 0)
    mine = select(Assignment.task_id).where(Assignment.labeler_id == user.id)
    for _ in range(1000):  # a lost race means another labeler filled a slot: finite, so this ends
        candidates = db.execute(
            select(Task.id).outerjoin(taken, taken.c.task_id == Task.id)
            .where(Task.project_id == project.id, Task.id.not_in(mine), n < project.overlap, *where)
            .order_by(n.desc(), Task.id).limit(10)).scalars().all()
        if not candidates:
            return None
        for task_id in candidates:
            used = set(db.scalars(select(Assignment.slot).where(Assignment.task_id == task_id,
                                                                 Assignment.slot.is_not(None))))
            free = [s for s in range(project.overlap) if s not in used]
            if not free:
                continue
            slot = free[user.id % len(free)]  # labelers racing for one task try different slots
            try:
                with db.begin_nested():
                    a = Assignment(task_id=task_id, labeler_id=user.id, slot=slot, status="pending")
                    db.add(a)
                    db.flush()
                return a
            except IntegrityError:
                continue  # another labeler took that slot (or this labeler, in another tab): next
    return None


def progress(db: Session, project: Project, user: User, kind: str | None = None) -> dict:
    """A labeler's queue in one project: done, started, still available to them."""
    where = _kind_filter(kind)
    counts = dict(db.execute(select(Assignment.status, func.count()).join(Task, Task.id == Assignment.task_id)
                             .where(Task.project_id == project.id, Assignment.labeler_id == user.id, *where)
                             .group_by(Assignment.status)).all())
    taken = _taken(project)
    mine = select(Assignment.task_id).where(Assignment.labeler_id == user.id)
    available = db.scalar(select(func.count()).select_from(Task).outerjoin(taken, taken.c.task_id == Task.id).where(
        Task.project_id == project.id, Task.id.not_in(mine), func.coalesce(taken.c.n, 0) < project.overlap, *where))
    done, pending = counts.get("submitted", 0), counts.get("pending", 0)
    return {"done": done, "pending": pending, "available": available, "total": done + pending + available,
            "skipped": counts.get("skipped", 0)}


def get_assignment(db: Session, assignment_id: int, user: User, *, write: bool = False) -> Assignment:
    """A labeler reaches only their own assignments; an admin may read anyone's but not write them."""
    a = db.get(Assignment, assignment_id)
    if a is None:
        raise NotFound(f"no assignment {assignment_id}")
    if a.labeler_id != user.id and (write or not user.is_admin):
        # the same answer as for a missing one: ids of other labelers' work are not confirmed
        raise NotFound(f"no assignment {assignment_id}")
    return a


def assignment_view(db: Session, a: Assignment) -> dict:
    task = db.get(Task, a.task_id)
    project = db.get(Project, task.project_id)
    label = db.scalar(select(Label).where(Label.assignment_id == a.id))
    view = task_view(db, task)
    view.update({"assignment": a.id, "project": project.name, "project_id": project.id, "status": a.status,
                 "k": len(task.output_ids), "flags": list(project.flags), "require_likert": project.require_likert,
                 "instructions": project.instructions,
                 "label": label.payload if label else None,
                 "review": {"status": label.review_status, "note": label.review_note} if label else None})
    return view


def submit(db: Session, a: Assignment, user: User, body: dict) -> tuple[Label, bool]:
    """Store (or replace) the labeler's answer to an assignment. -> (label, created)."""
    if a.labeler_id != user.id:
        raise Forbidden("only the labeler it is assigned to can answer an assignment")
    if a.status == "skipped":
        raise LabelError("you skipped this task; it may have gone to another labeler", "assignment")
    task = db.get(Task, a.task_id)
    project = db.get(Project, task.project_id)
    payload = validate(task.kind, body, k=len(task.output_ids), flags=list(project.flags),
                       require_likert=project.require_likert)
    seconds = body.get("seconds")
    if seconds is None:
        seconds = (utcnow() - a.created_at).total_seconds()
    now = utcnow()
    label = db.scalar(select(Label).where(Label.assignment_id == a.id))
    created = label is None
    if created:
        try:
            with db.begin_nested():
                label = Label(assignment_id=a.id, task_id=task.id, labeler_id=user.id, payload=payload,
                              review_status="pending", review_note="", seconds=float(seconds))
                db.add(label)
                db.flush()
        except IntegrityError:  # the same submission raced in twice: keep one, updated
            created = False
            label = db.scalar(select(Label).where(Label.assignment_id == a.id))
    if not created:
        label.payload = payload
        label.updated_at = now
        label.seconds = float(seconds)
        if label.review_status == "rejected":
            label.review_status = "pending"  # resubmitted after a rejection: back to review
    a.status = "submitted"
    a.updated_at = now
    db.flush()
    return label, created


def skip(db: Session, a: Assignment, user: User) -> None:
    if a.labeler_id != user.id:
        raise Forbidden("only the labeler it is assigned to can skip an assignment")
    if a.status == "submitted":
        raise LabelError("already submitted: edit your answer instead", "assignment")
    a.status, a.slot, a.updated_at = "skipped", None, utcnow()  # the slot goes back to the pool
    db.flush()


def my_work(db: Session, user: User, project: Project | None = None, limit: int = 500) -> list[dict]:
    q = (select(Assignment, Task, Label, Project).join(Task, Task.id == Assignment.task_id)
         .join(Project, Project.id == Task.project_id).outerjoin(Label, Label.assignment_id == Assignment.id)
         .where(Assignment.labeler_id == user.id, Assignment.status != "skipped"))
    if project is not None:
        q = q.where(Task.project_id == project.id)
    rows = db.execute(q.order_by(Assignment.id.desc()).limit(limit)).all()
    prompts = {p.id: p.text for p in db.scalars(select(Prompt).where(Prompt.id.in_({t.prompt_id for _, t, _, _ in rows})))}
    return [{"assignment": a.id, "project": p.name, "kind": t.kind, "prompt": prompts.get(t.prompt_id, ""),
             "status": a.status, "review": lab.review_status if lab else None,
             "note": lab.review_note if lab else "", "label": lab.id if lab else None} for a, t, lab, p in rows]


# ----------------------------------------------------------------------------- review

def labels_for_review(db: Session, project: Project, status: str | None = "pending", limit: int = 200) -> list[dict]:
    q = (select(Label, Task, User).join(Task, Task.id == Label.task_id).join(User, User.id == Label.labeler_id)
         .where(Task.project_id == project.id))
    if status:
        q = q.where(Label.review_status == status)
    rows = db.execute(q.order_by(Label.id).limit(limit)).all()
    out = []
    for label, task, user in rows:
        view = task_view(db, task)
        out.append({**view, "label": label.id, "labeler": user.username, "payload": label.payload,
                    "review_status": label.review_status, "review_note": label.review_note,
                    "gold": task.gold})
    return out


def review(db: Session, label_id: int, reviewer: User, status: str, note: str = "") -> Label:
    if status not in ("accepted", "rejected", "pending"):
        raise LabelError("expected accepted, rejected or pending", "status")
    if not isinstance(note, str) or len(note) > 5000:
        raise LabelError("expected a note of at most 5000 characters", "note")
    label = db.get(Label, label_id)
    if label is None:
        raise NotFound(f"no label {label_id}")
    label.review_status, label.review_note = status, note
    label.reviewed_by, label.reviewed_at = reviewer.id, utcnow()
    db.flush()
    return label


# ----------------------------------------------------------------------------- quality

def _as_ranks(kind: str, payload: dict) -> list[int] | None:
    if kind == "comparison":
        return {"A": [1, 2], "B": [2, 1], "tie": [1, 1]}[payload["choice"]]
    if payload.get("not_rankable"):
        return None  # no order given: left out of agreement
    return payload["ranks"]


def quality(db: Session, project: Project) -> dict:
    """Agreement among labelers on overlapping tasks, Krippendorff's alpha, gold accuracy per labeler."""
    rows = db.execute(select(Label, Task, User).join(Task, Task.id == Label.task_id)
                      .join(User, User.id == Label.labeler_id)
                      .where(Task.project_id == project.id, Task.kind != "demonstration",
                             Label.review_status != "rejected")).all()
    items = {"ranking": defaultdict(dict), "comparison": defaultdict(dict)}
    likert_units = defaultdict(list)
    gold = defaultdict(lambda: [0, 0])
    counts = defaultdict(int)
    seconds = defaultdict(list)
    for label, task, user in rows:
        counts[user.username] += 1
        if label.seconds is not None:
            seconds[user.username].append(label.seconds)
        ranks = _as_ranks(task.kind, label.payload)
        if ranks is None:
            continue
        items[task.kind][task.id][user.username] = ranks
        for i, s in enumerate(label.payload.get("likert") or []):
            likert_units[(task.id, i)].append(s)
        if task.gold and task.gold.get("ranks"):
            right, total = A.gold_accuracy(task.gold["ranks"], ranks)
            gold[user.username][0] += right
            gold[user.username][1] += total
    out = {"project": project.name, "overlap": project.overlap}
    for kind in ("ranking", "comparison"):
        overlapping = {t: by for t, by in items[kind].items() if len(by) >= 2}
        agree = A.pairwise_agreement(overlapping)
        pair_units = [list(col) for by in overlapping.values() for col in zip(*(A.pair_orders(r) for r in by.values()))]
        out[kind] = {"labeled_items": len(items[kind]), "overlapping_items": len(overlapping),
                     "agreement": agree["overall"], "pairs_compared": agree["total"],
                     "alpha_pairs_nominal": A.krippendorff_alpha(pair_units, "nominal"),
                     "per_labeler": agree["per_labeler"]}
    out["ranking"]["alpha_likert_interval"] = A.krippendorff_alpha(list(likert_units.values()), "interval")
    labelers = sorted(counts)
    out["labelers"] = [{
        "labeler": name, "labels": counts[name],
        "agreement": out["ranking"]["per_labeler"].get(name, {}).get("agreement"),
        "comparison_agreement": out["comparison"]["per_labeler"].get(name, {}).get("agreement"),
        "gold_accuracy": gold[name][0] / gold[name][1] if gold[name][1] else None,
        "gold_pairs": gold[name][1],
        "below_gold_threshold": bool(gold[name][1]) and gold[name][0] / gold[name][1] < GOLD_THRESHOLD,
        "median_seconds": sorted(seconds[name])[len(seconds[name]) // 2] if seconds[name] else None,
    } for name in labelers]
    out["gold_threshold"] = GOLD_THRESHOLD
    return out


def project_stats(db: Session, project: Project) -> dict:
    n_prompts = db.scalar(select(func.count()).select_from(Prompt).where(Prompt.project_id == project.id))
    n_outputs = db.scalar(select(func.count()).select_from(Output).join(Prompt).where(Prompt.project_id == project.id))
    tasks = dict(db.execute(select(Task.kind, func.count()).where(Task.project_id == project.id)
                            .group_by(Task.kind)).all())
    labels = dict(db.execute(select(Task.kind, func.count()).join(Label, Label.task_id == Task.id)
                             .where(Task.project_id == project.id).group_by(Task.kind)).all())
    review_counts = dict(db.execute(select(Label.review_status, func.count()).join(Task, Task.id == Label.task_id)
                                    .where(Task.project_id == project.id).group_by(Label.review_status)).all())
    gold = db.scalar(select(func.count()).select_from(Task).where(Task.project_id == project.id,
                                                                   Task.gold.is_not(None)))
    models = [m for m in db.scalars(select(Output.model).join(Prompt).where(Prompt.project_id == project.id)
                                    .distinct()) if m]
    return {"prompts": n_prompts, "outputs": n_outputs, "gold_tasks": gold, "models": sorted(models),
            "kinds": {k: {"tasks": tasks.get(k, 0), "labels": labels.get(k, 0),
                          "needed": tasks.get(k, 0) * project.overlap} for k in KINDS},
            "review": review_counts}


# ----------------------------------------------------------------------------- export

EXPORT_KINDS = {"rankings": "ranking", "demonstrations": "demonstration", "comparisons": "comparison"}


def export_records(db: Session, project: Project, kind: str, include_rejected: bool = False) -> list[dict]:
    """The record contract (ARCHITECTURE.md), one record per label:
      rankings:       {"prompt", "completions", "ranks", "labeler", "likert", "flags", "not_rankable"?}
      demonstrations: {"prompt", "completion", "labeler"}
      comparisons:    a ranking with K = 2 (a tie is [1, 1]), "models" naming each side
    plus the prompt's imported extra fields (e.g. the sandbox's "task"). Each record is parsed back
    with the contract's own parser before it is returned."""
    if kind not in EXPORT_KINDS:
        raise LabelError(f"expected one of {', '.join(EXPORT_KINDS)}", "kind")
    task_kind = EXPORT_KINDS[kind]
    q = (select(Label, Task, Prompt, User).join(Task, Task.id == Label.task_id)
         .join(Prompt, Prompt.id == Task.prompt_id).join(User, User.id == Label.labeler_id)
         .where(Task.project_id == project.id, Task.kind == task_kind))
    if not include_rejected:
        q = q.where(Label.review_status != "rejected")
    rows = db.execute(q.order_by(Task.id, Label.id)).all()
    needed = {i for _, task, _, _ in rows for i in task.output_ids}
    outputs = {o.id: o for o in db.scalars(select(Output).where(Output.id.in_(needed)))} if needed else {}
    out = []
    for n, (label, task, prompt, user) in enumerate(rows, start=1):
        meta = {k: v for k, v in (prompt.meta or {}).items()
                if k not in RECORD_FIELDS | {"messages", "text", "chosen", "rejected", "scores"}}
        p = label.payload
        if task_kind == "demonstration":
            rec = {"prompt": prompt.text, "completion": p["completion"], "labeler": user.username, **meta}
            parse_demonstration(rec, "<export>", n)
        else:
            outs = [outputs[i] for i in task.output_ids]
            if task_kind == "ranking":
                rec = {"prompt": prompt.text, "completions": [o.text for o in outs], "ranks": list(p["ranks"]),
                       "labeler": user.username}
                if p.get("likert") is not None:
                    rec["likert"] = list(p["likert"])
                rec["flags"] = p.get("flags") or [{} for _ in outs]
                if p.get("not_rankable"):
                    rec["not_rankable"] = True
            else:
                rec = {"prompt": prompt.text, "completions": [o.text for o in outs],
                       "ranks": _as_ranks("comparison", p), "labeler": user.username}
            if any(o.model for o in outs):
                rec["models"] = [o.model for o in outs]
            rec.update(meta)
            parse_ranking(rec, "<export>", n)
        out.append(rec)
    return out


def counts_by_labeler(db: Session, project: Project) -> dict[str, int]:
    return dict(db.execute(select(User.username, func.count()).join(Label, Label.labeler_id == User.id)
                           .join(Task, and_(Task.id == Label.task_id, Task.project_id == project.id))
                           .group_by(User.username)).all())
