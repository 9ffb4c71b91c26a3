"""K outputs per prompt from one or more model directories, with the project's sampler.

For every prompt of the project that has no outputs yet, K is drawn from the project's K range
(InstructGPT: 4 to 9); output c comes from model c mod M at temperature c mod T, so several models
and temperatures mix in one ranking task. The outputs are stored, then ranking tasks made."""
from __future__ import annotations

import random
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy import func, select

from instructkit.config import TemplateConfig
from instructkit.errors import InputError
from instructkit.feedback import service as svc
from instructkit.feedback.db import Output, Prompt
from instructkit.feedback.labels import MAX_K, MIN_K


def _model_names(dirs: list[str]) -> list[str]:
    names = [Path(d).name or d for d in dirs]
    return names if len(set(names)) == len(names) else [str(d) for d in dirs]


def check_options(opts: dict) -> dict:
    """Validate the generation options (shared by the API, the admin page and the CLI)."""
    models = opts.get("models")
    if isinstance(models, str):
        models = [m.strip() for m in models.replace("\n", ",").split(",") if m.strip()]
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        raise InputError("expected one or more model directories", field="models")
    for m in models:
        if not (Path(m) / "config.json").is_file():
            raise InputError("not a model directory (no config.json)", path=m, field="models")
    k = opts.get("k")
    if k is not None and k != "":
        text = str(k)
        try:
            lo, hi = (int(text), int(text)) if ".." not in text else (int(text.split("..")[0]), int(text.split("..")[1]))
        except ValueError:
            raise InputError(f"expected an integer or a range like 4..9, got {text!r}", field="k") from None
        if not MIN_K <= lo <= hi <= MAX_K:
            raise InputError(f"expected {MIN_K} <= A <= B <= {MAX_K} in A..B, got {text!r}", field="k")
        k = (lo, hi)
    temps = opts.get("temperatures", [1.0])
    if isinstance(temps, (int, float, str)):
        temps = [t for t in str(temps).split(",") if t.strip()]
    try:
        temps = [float(t) for t in temps]
    except (TypeError, ValueError):
        raise InputError("expected comma-separated numbers", field="temperatures") from None
    if not temps or any(t < 0 for t in temps):
        raise InputError("temperatures must be >= 0", field="temperatures")
    out = {"models": models, "k": k, "temperatures": temps}
    for name, default, lo, hi in (("max_new_tokens", 48, 1, 4096), ("seed", 0, 0, 2**31), ("batch_size", 32, 1, 4096)):
        v = opts.get(name, default)
        try:
            v = int(v)
        except (TypeError, ValueError):
            raise InputError("expected an integer", field=name) from None
        if not lo <= v <= hi:
            raise InputError(f"expected {lo} to {hi}", field=name)
        out[name] = v
    return out


def generate_outputs(sessions, project_id: int, opts: dict, log=print) -> dict:
    """Sample outputs for the project's prompts that have none; make ranking tasks. -> counts"""
    from instructkit.generation import SamplingParams, generate_texts
    from instructkit.models import load_causal_lm, set_threads
    from instructkit.data.encode import render_prompt

    opts = check_options(opts)
    with sessions() as db:
        project = svc.get_project(db, project_id)
        counts = dict(db.execute(select(Output.prompt_id, func.count()).join(Prompt)
                                 .where(Prompt.project_id == project.id).group_by(Output.prompt_id)).all())
        prompts = [(p.id, p.text) for p in db.scalars(select(Prompt).where(Prompt.project_id == project.id)
                                                     .order_by(Prompt.id)) if not counts.get(p.id)]
        lo, hi = opts["k"] or (project.k_min, project.k_max)
        template = TemplateConfig(kind=project.template)
    if not prompts:
        return {"prompts": 0, "outputs": 0, "tasks": 0}
    rng = random.Random(opts["seed"])
    ks = [rng.randint(lo, hi) for _ in prompts]
    names = _model_names(opts["models"])
    texts: list[list[str | None]] = [[None] * k for k in ks]
    set_threads(0)
    t0 = time.time()
    for mi, (mdir, name) in enumerate(zip(opts["models"], names)):
        model, tok = load_causal_lm(mdir)
        model.eval()
        rendered = [render_prompt(text, tok, template) for _, text in prompts]
        for ti, temp in enumerate(opts["temperatures"]):
            # output c of prompt i: model c % M, temperature (c // M) % T
            jobs = [(i, c) for i, k in enumerate(ks) for c in range(k)
                    if c % len(names) == mi and (c // len(names)) % len(opts["temperatures"]) == ti]
            if not jobs:
                continue
            params = SamplingParams(max_new_tokens=opts["max_new_tokens"], temperature=temp)
            outs = generate_texts(model, tok, [rendered[i] for i, _ in jobs], params, batch_size=opts["batch_size"],
                                  seed=opts["seed"] * 1000 + mi * 100 + ti)
            for (i, c), t in zip(jobs, outs):
                texts[i][c] = t
        log(f"label generate: {name}: {sum(1 for k in ks for c in range(k) if c % len(names) == mi)} outputs "
            f"({time.time() - t0:.1f}s)")
        del model
    with sessions() as db:
        project = svc.get_project(db, project_id)
        for (pid, _), outs, k in zip(prompts, texts, ks):
            svc.add_outputs(db, pid, outs, [names[c % len(names)] for c in range(k)])
        db.flush()
        n_tasks = svc.make_tasks(db, project, "ranking", seed=opts["seed"])
        db.commit()
    return {"prompts": len(prompts), "outputs": sum(ks), "tasks": n_tasks, "seconds": round(time.time() - t0, 2)}


def start_job(app, project_id: int, opts: dict) -> str:
    """Run `generate_outputs` in a background thread; its state is at /api/v1/jobs/{id}."""
    check_options(opts)  # refuse bad options now, not in the thread
    job_id = uuid.uuid4().hex[:12]
    app.state.jobs[job_id] = {"id": job_id, "project": project_id, "status": "running", "log": [], "result": None}

    def run():
        job = app.state.jobs[job_id]
        try:
            job["result"] = generate_outputs(app.state.sessions, project_id, opts, log=job["log"].append)
            job["status"] = "done"
        except Exception as e:  # shown on the project page and at /api/v1/jobs/{id}
            job["status"], job["error"] = "failed", (e.format() if isinstance(e, InputError) else repr(e))

    threading.Thread(target=run, name=f"generate-{job_id}", daemon=True).start()
    return job_id
