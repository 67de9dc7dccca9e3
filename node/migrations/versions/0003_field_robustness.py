"""instances.anatomic_region, studies.held_until, dispatches.unanswered

- instances.anatomic_region: the image's coded anatomy (AnatomicRegionSequence), as
  "SCHEME:VALUE", for eligibility;
- studies.held_until: completion waits until then while an image of the study is still arriving
  (renewed by the SCP that receives it);
- dispatches.unanswered: the last attempt sent the object and got no response, so the
  destination may hold it already.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("anatomic_region", sa.String(length=64), nullable=True))
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("held_until", sa.DateTime(), nullable=True))
    with op.batch_alter_table("dispatches", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("unanswered", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("dispatches", schema=None) as batch_op:
        batch_op.drop_column("unanswered")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("held_until")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("anatomic_region")
