"""Dependencies point one way: dags -> reconciler, and reconciler never imports airflow."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_library_never_imports_airflow() -> None:
    """No module under reconciler/ imports airflow, so the library runs under any orchestrator."""
    offenders = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "reconciler").rglob("*.py")
        if any(name == "airflow" or name.startswith("airflow.") for name in _imported_modules(path))
    )
    assert offenders == []


def test_library_never_imports_dags() -> None:
    """reconciler/ does not import from dags/ (dependencies point down only)."""
    offenders = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "reconciler").rglob("*.py")
        if any(name == "dags" or name.startswith("dags.") for name in _imported_modules(path))
    )
    assert offenders == []


def test_only_the_balance_core_writes_balances_or_entries() -> None:
    """Outside reconciler/balances.py (and the demo loader and migrations), no library module
    updates customers or inserts ledger entries."""
    allowed = {"balances.py", "demo.py"}
    offenders = []
    for path in (ROOT / "reconciler").rglob("*.py"):
        if path.name in allowed or "migrations" in path.parts:
            continue
        source = path.read_text().lower()
        for needle in ("update(customers)", "insert(ledger_entries)", "update customers",
                       "insert into customer_ledger_entries"):
            if needle in source:
                offenders.append(f"{path.relative_to(ROOT)}: {needle}")
    assert offenders == []
