"""Alembic environment: runs on the connection handed over by :mod:`reconciler.migrate`.

The version table lives in schema ``reconciler`` so a company database that uses Alembic for its
own tables keeps its ``public.alembic_version`` untouched.
"""

from alembic import context
from sqlalchemy import text

connection = context.config.attributes["connection"]
connection.execute(text("create schema if not exists reconciler"))
context.configure(connection=connection, version_table_schema="reconciler", transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
