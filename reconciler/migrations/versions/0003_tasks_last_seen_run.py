"""Index tasks by the run that last saw them drifting (run summaries, `tasks list --run`): without it
those read the whole of reconciler.tasks, which grows every night.

Revision ID: 0003
Revises: 0002
"""

from alembic import op
from sqlalchemy import text

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.get_bind().execute(
        text("create index if not exists ix_tasks_last_seen_run on reconciler.tasks (last_seen_run_id)"))


def downgrade() -> None:
    op.get_bind().execute(text("drop index if exists reconciler.ix_tasks_last_seen_run"))
