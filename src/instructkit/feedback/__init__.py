"""The labeling app: people (or simulated / AI labelers through the HTTP API) write demonstrations,
evaluate and rank K outputs per prompt, and compare two models' outputs, as InstructGPT's labelers
did; the export is the record contract that `instructkit rm`, `sft`, `dpo` and `eval` read.

  db.py         tables (SQLAlchemy 2), engines for SQLite / PostgreSQL, Alembic upgrade at startup
  labels.py     what a submission is: Table 3 flags, validation of demonstrations, rankings, comparisons
  agreement.py  pairwise agreement (the paper's 72.6%), Krippendorff's alpha, gold accuracy: pure functions
  service.py    projects, imports, tasks, the labeler queue with overlap, submissions, review, export
  generate.py   K outputs per prompt from one or more model directories (the sampler)
  security.py   password hashing (argon2), sessions, CSRF, API tokens
  app.py        the FastAPI application: auth, limits, error pages; api.py (JSON) and pages.py (HTML)
  cli.py        `instructkit label serve | migrate | user | token | project | import-prompts | ...`
  simulate.py   the sandbox's simulated labelers, working through the HTTP API with their tokens

Install with `pip install instructkit[app]`; docs/labeling.md is the guide."""
