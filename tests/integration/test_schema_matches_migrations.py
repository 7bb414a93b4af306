"""The Table objects in reconciler.schema describe the database the migrations build: Alembic's own comparison
(columns, types, nullability, indexes, unique constraints and foreign keys) finds no difference."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, Integer, MetaData

from reconciler.schema import SCHEMA, metadata

#: Tables the migrations create that schema.py does not describe, on purpose (Alembic's own bookkeeping).
NOT_DESCRIBED = {"alembic_version"}


def _include_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
    if type_ == "schema":
        return name in (None, SCHEMA)
    return True


def _include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    return not (type_ == "table" and name in NOT_DESCRIBED)


def _differences(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "include_schemas": True, "compare_type": True, "include_name": _include_name,
            "include_object": _include_object})
        return list(compare_metadata(context, metadata))


def test_schema_py_and_the_migrations_agree(engine: Engine) -> None:
    """No column, type, nullability, index, unique constraint or foreign key differs between schema.py and
    the migrated database."""
    assert _differences(engine) == []


def test_the_comparison_sees_a_wrong_type_a_missing_index_and_a_missing_foreign_key(engine: Engine) -> None:
    """The check can fail: a schema.py that got a type, an index or a foreign key wrong is reported."""
    wrong = MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(wrong)
    tasks = wrong.tables[f"{SCHEMA}.tasks"]
    tasks.c.drift.type = Integer()
    tasks.indexes.discard(next(i for i in tasks.indexes if i.name == "ix_tasks_status"))
    findings = wrong.tables[f"{SCHEMA}.findings"]
    findings.constraints.discard(next(iter(findings.foreign_key_constraints)))
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "include_schemas": True, "compare_type": True, "include_name": _include_name,
            "include_object": _include_object})
        found = repr(compare_metadata(context, wrong))
    assert "modify_type" in found and "ix_tasks_status" in found and "remove_fk" in found
