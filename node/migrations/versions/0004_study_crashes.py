"""studies.crashes: how many times a worker died on the study

Crash accounting (``worker.max_crashes``) reads this counter, which each reclaim increments,
instead of counting the study's "reclaimed" events. The upgrade fills it from those events, so a
study keeps the count it had.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A literal default lets SQLite add the column in place: a SQL expression would make batch
    # mode copy the table, which the foreign keys onto studies forbid.
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("crashes", sa.Integer(), nullable=False, server_default="0"))
    op.execute(
        "UPDATE studies SET crashes = (SELECT count(*) FROM study_events"
        " WHERE study_events.study_id = studies.id AND study_events.event = 'reclaimed')"
    )


def downgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("crashes")
