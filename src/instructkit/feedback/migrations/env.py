"""Alembic environment: migrations run on the connection `db.upgrade` hands over (no alembic.ini)."""
from alembic import context

from instructkit.feedback.db import Base

connection = context.config.attributes["connection"]
# batch mode: SQLite cannot ALTER most things, so Alembic copies the table; PostgreSQL ALTERs in place
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
