"""review of labels (accepted / rejected with a note, by whom, when) and time spent per label

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch: on SQLite the table is copied with the new columns (existing labels kept, status pending)
    with op.batch_alter_table("labels") as batch:
        batch.add_column(sa.Column("review_status", sa.String(16), nullable=False, server_default="pending"))
        batch.add_column(sa.Column("review_note", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("reviewed_by", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("reviewed_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("seconds", sa.Float(), nullable=True))
        batch.create_foreign_key("fk_labels_reviewed_by_users", "users", ["reviewed_by"], ["id"],
                                 ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("labels") as batch:
        batch.drop_constraint("fk_labels_reviewed_by_users", type_="foreignkey")
        for col in ("seconds", "reviewed_at", "reviewed_by", "review_note", "review_status"):
            batch.drop_column(col)
