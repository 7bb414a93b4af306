"""The Table objects in reconciler.schema describe the database the migrations build."""

from __future__ import annotations

from sqlalchemy import Engine, inspect

from reconciler.schema import metadata


def test_every_declared_column_exists_with_its_nullability(engine: Engine) -> None:
    """Each column in schema.py exists in the migrated database, with the same NOT NULL rule."""
    inspector = inspect(engine)
    mismatches = []
    for table in metadata.sorted_tables:
        actual = {c["name"]: c for c in inspector.get_columns(table.name, schema=table.schema)}
        for column in table.columns:
            found = actual.get(column.name)
            if found is None:
                mismatches.append(f"{table.fullname}.{column.name} missing")
            elif not column.primary_key and bool(found["nullable"]) != bool(column.nullable):
                mismatches.append(f"{table.fullname}.{column.name} nullable={found['nullable']}, "
                                  f"schema.py says {column.nullable}")
    assert mismatches == []
