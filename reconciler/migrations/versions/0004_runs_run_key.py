"""An orchestrator's key on runs, so a retried "start the run" step returns the run it already started
instead of starting a second one (at most one running run per key; a failed run's key can start anew).

Revision ID: 0004
Revises: 0003
"""

from alembic import op
from sqlalchemy import text

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    bind = op.get_bind()
    bind.execute(text("alter table reconciler.runs add column run_key text"))
    bind.execute(text("""create unique index ux_runs_running_key on reconciler.runs (run_key)
                         where status = 'running' and run_key is not null"""))


def downgrade() -> None:
    bind = op.get_bind()
    bind.execute(text("drop index if exists reconciler.ux_runs_running_key"))
    bind.execute(text("alter table reconciler.runs drop column if exists run_key"))
