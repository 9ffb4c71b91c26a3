"""The labeling app's tables, its engines (SQLite file by default, PostgreSQL by URL) and the schema
upgrade that runs at every start.

The schema is owned by the Alembic revisions in `migrations/versions/`; these classes must match the
newest one (tests/test_feedback_storage.py compares them). A new column means a new revision, so an
existing labels.db is upgraded in place and keeps its labels."""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Integer, MetaData, String, Text,
                        UniqueConstraint, create_engine, event)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from instructkit.errors import InputError

DEFAULT_DB = "sqlite:///labels.db"
HEAD = "0002"  # newest migration revision


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # naive UTC: SQLite keeps no zone


def text_hash(text: str) -> str:
    """Uniqueness of long texts (a btree index on the text itself has a size limit in PostgreSQL)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# constraint names are fixed so that migrations can name what they alter (SQLite batch mode needs it)
NAMING = {"ix": "ix_%(column_0_label)s", "uq": "uq_%(table_name)s_%(column_0_N_name)s",
          "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s", "pk": "pk_%(table_name)s"}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict: JSON, list: JSON}


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))  # "admin" | "labeler"
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class ApiToken(Base):
    """A programmatic labeler's credential; only its SHA-256 is stored."""
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class WebSession(Base):
    """A browser login: the cookie holds a random token, the table its hash and the CSRF token."""
    __tablename__ = "web_sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    instructions: Mapped[str] = mapped_column(Text, default="")
    overlap: Mapped[int] = mapped_column(Integer, default=1)       # labelers per task
    k_min: Mapped[int] = mapped_column(Integer, default=4)         # outputs per ranking task
    k_max: Mapped[int] = mapped_column(Integer, default=9)
    flags: Mapped[list] = mapped_column(JSON)                      # flag names asked per output
    require_likert: Mapped[bool] = mapped_column(Boolean, default=True)
    template: Mapped[str] = mapped_column(String(16), default="plain")  # how the sampler renders prompts
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Prompt(Base):
    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("project_id", "text_hash"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)
    text_hash: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict] = mapped_column(JSON)  # the imported record's extra fields, carried into the export
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Output(Base):
    """One model completion of a prompt (sampled here or imported)."""
    __tablename__ = "outputs"
    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Task(Base):
    """One unit of work: a demonstration to write, K outputs to rank, or two outputs to compare."""
    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("project_id", "prompt_id", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "demonstration" | "ranking" | "comparison"
    key: Mapped[str] = mapped_column(String(255))  # kind, or "comparison:<model A>|<model B>"
    output_ids: Mapped[list] = mapped_column(JSON)  # in the order shown to labelers
    gold: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)  # known answer: {"ranks": [...]}
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Assignment(Base):
    """A task handed to one labeler. `slot` (0..overlap-1) is unique per task, so concurrent
    labelers can never over-assign a task; a skipped assignment gives its slot back (NULL)."""
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("task_id", "labeler_id"), UniqueConstraint("task_id", "slot"))
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    slot: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | submitted | skipped
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Label(Base):
    """A labeler's answer to an assignment; resubmitting updates it (one label per assignment)."""
    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"), unique=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    payload: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # revision 0002: review and time spent
    review_status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    review_note: Mapped[str] = mapped_column(Text, default="", server_default="")
    reviewed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)


# ----------------------------------------------------------------------------- engines

def normalize_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean psycopg 3 (the driver the `app` extra installs)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str = DEFAULT_DB) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        if url in ("sqlite://", "sqlite:///:memory:"):
            raise InputError("an in-memory SQLite database cannot be shared by the server's threads; "
                             "give a file: sqlite:///labels.db", field="--db")
        db_file = url.split("///", 1)[-1]
        if db_file and Path(db_file).parent and not Path(db_file).parent.exists():
            raise InputError("the database's directory does not exist", path=str(Path(db_file).parent), field="--db")
        # One connection, queued for: SQLite has one writer at a time anyway, and the pool's queue is
        # fair where SQLite's busy handler polls (under load a request could starve past its timeout).
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=1,
                               max_overflow=0, pool_timeout=300)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves, below
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: safe across app crashes, one fsync per checkpoint
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # IMMEDIATE takes the write lock up front: a deferred transaction that reads and then
            # writes can fail with "database is locked" without waiting when another writer is active
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        return engine
    if url.startswith("postgresql"):
        return create_engine(url, pool_size=10, max_overflow=30, pool_pre_ping=True)
    raise InputError(f"unsupported database URL {url.split(':', 1)[0]!r}: use sqlite:///FILE or postgresql://...",
                     field="--db")


def session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (Alembic). Runs at every start; a no-op when up to date."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
