"""Dependencies point one way, with no cycle; every table has one writer module; only the core writes money."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "reconciler"
#: The demo loader replaces the whole ledger (COPY, TRUNCATE) on purpose; migrations own the schema.
EXEMPT = {"reconciler/demo.py"}


def _library_files() -> list[Path]:
    return [p for p in LIBRARY.rglob("*.py") if "migrations" not in p.parts]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-level imports count; TYPE_CHECKING ones do not)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _unit(module: str) -> str:
    """A module's unit in the dependency graph: a package counts as one unit (``reconciler.balances``)."""
    parts = module.split(".")
    if len(parts) > 2 and (LIBRARY / parts[1]).is_dir():
        return ".".join(parts[:2])
    return ".".join(parts[:2]) if len(parts) >= 2 else module


def _graph() -> dict[str, set[str]]:
    units = {_unit(_module_name(p)) for p in _library_files()}
    graph: dict[str, set[str]] = {u: set() for u in units}
    for path in _library_files():
        source = _unit(_module_name(path))
        for name in _imported_modules(path):
            if name.startswith("reconciler."):
                target = _unit(name)
                if target in units and target != source:
                    graph[source].add(target)
    return graph


def test_library_never_imports_airflow() -> None:
    """No module under reconciler/ imports airflow, so the library runs under any orchestrator."""
    offenders = sorted(_rel(p) for p in LIBRARY.rglob("*.py")
                       if any(n == "airflow" or n.startswith("airflow.") for n in _imported_modules(p)))
    assert offenders == []


def test_library_never_imports_dags() -> None:
    """reconciler/ does not import from dags/ (dependencies point down only)."""
    offenders = sorted(_rel(p) for p in LIBRARY.rglob("*.py")
                       if any(n == "dags" or n.startswith("dags.") for n in _imported_modules(p)))
    assert offenders == []


def test_the_library_has_no_import_cycle() -> None:
    """No chain of imports (lazy ones included) leads from a module back to itself."""
    graph = _graph()
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str], on_path: set[str], done: set[str]) -> None:
        for target in sorted(graph[node]):
            if target in on_path:
                cycles.append([*path[path.index(target):], target])
            elif target not in done:
                visit(target, [*path, target], on_path | {target}, done)
        done.add(node)

    finished: set[str] = set()
    for start in sorted(graph):
        if start not in finished:
            visit(start, [start], {start}, finished)
    assert cycles == []


def test_the_lower_layers_import_nothing_above_them() -> None:
    """The task lifecycle knows neither the balance core nor the corrections; the core knows no pipeline,
    planner or corrections; pure rule modules import no database module."""
    graph = _graph()
    forbidden = {
        "reconciler.tasks": {"reconciler.balances", "reconciler.corrections", "reconciler.correction_plan",
                             "reconciler.correction_executor", "reconciler.pipeline"},
        "reconciler.balances": {"reconciler.corrections", "reconciler.correction_plan",
                                "reconciler.correction_executor", "reconciler.pipeline", "reconciler.cli"},
        "reconciler.correction_plan": {"reconciler.balances", "reconciler.correction_executor",
                                       "reconciler.pipeline", "reconciler.db"},
        "reconciler.vocabulary": {u for u in graph if u != "reconciler.errors"},
        "reconciler.run_limits": {u for u in graph if u not in ("reconciler.errors", "reconciler.money",
                                                                 "reconciler.vocabulary")},
    }
    offenders = sorted(f"{unit} imports {target}" for unit, banned in forbidden.items()
                       for target in graph[unit] & banned)
    assert offenders == []


# ---- writers ----------------------------------------------------------------------------------------------

_WRITE_METHODS = {"insert", "update", "delete"}


def _sqlalchemy_writes(tree: ast.AST, table: str) -> bool:
    """``table.insert()/update()/delete()`` or ``insert(table)/update(table)/delete(table)`` anywhere."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (isinstance(func, ast.Attribute) and func.attr in _WRITE_METHODS and isinstance(func.value, ast.Name)
                and func.value.id == table):
            return True
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if name in _WRITE_METHODS and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id == table:
            return True
    return False


def _sql_writes(source: str, table: str) -> bool:
    """SQL text that writes ``table``: INSERT INTO, UPDATE, DELETE FROM, TRUNCATE, COPY ... FROM."""
    name = re.escape(table)
    pattern = (rf"\b(insert\s+into|update|delete\s+from|truncate(\s+table)?|copy)\s+(only\s+)?"
               rf"(public\.)?{name}\b")
    return re.search(pattern, source, re.IGNORECASE) is not None


def _writers(sql_name: str, python_names: set[str]) -> set[str]:
    found = set()
    for path in _library_files():
        if _rel(path) in EXEMPT:
            continue
        source = path.read_text()
        tree = ast.parse(source)
        if _sql_writes(source, sql_name) or any(_sqlalchemy_writes(tree, n) for n in python_names):
            found.add(_rel(path))
    return found


def test_only_the_balance_core_writes_balances_or_entries() -> None:
    """Outside reconciler/balances/ (and the demo loader and migrations), no library module updates
    customers or writes ledger entries: not by SQL text, not by SQLAlchemy Core, not by COPY."""
    writers = (_writers("customers", {"customers"}) | _writers("customer_ledger_entries", {"ledger_entries"}))
    assert {w for w in writers if not w.startswith("reconciler/balances/")} == set()
    assert writers, "the balance core's statements were not recognised as writes: the scan is broken"


def test_each_reconciler_table_has_one_writer_module() -> None:
    """reconciler.tasks, findings, runs, run_chunks and quality_results are each written by one module."""
    owners = {
        "reconciler.tasks": ({"tasks"}, "reconciler/tasks.py"),
        "reconciler.findings": ({"findings"}, "reconciler/findings.py"),
        "reconciler.runs": ({"runs"}, "reconciler/runs.py"),
        "reconciler.run_chunks": ({"run_chunks"}, "reconciler/run_chunks.py"),
        "reconciler.quality_results": ({"quality_results"}, "reconciler/quality.py"),
    }
    found = {table: _writers(table, names) for table, (names, _) in owners.items()}
    assert found == {table: {owner} for table, (_, owner) in owners.items()}


def test_no_library_module_writes_the_audit_tables() -> None:
    """reconciler.audit_log, audit_head and audit_queue are written only by the database functions of migration
    0007: the library appends through reconciler.append_audit, never by a statement of its own."""
    writers = set()
    for table, names in (("reconciler.audit_log", {"audit_log"}), ("reconciler.audit_head", {"audit_head"}),
                         ("reconciler.audit_queue", {"audit_queue"})):
        writers |= _writers(table, names)
    assert writers == set()


def test_the_scans_recognise_every_way_of_writing() -> None:
    """The writer scans catch SQL text, COPY and SQLAlchemy Core calls (so they cannot pass by missing them)."""
    assert _sql_writes("UPDATE customers SET balance = 0", "customers")
    assert _sql_writes("copy customer_ledger_entries from stdin", "customer_ledger_entries")
    assert _sql_writes("insert into reconciler.tasks (id) values (1)", "reconciler.tasks")
    assert not _sql_writes("select * from customers", "customers")
    assert _sqlalchemy_writes(ast.parse("conn.execute(customers.update().values(balance=0))"), "customers")
    assert _sqlalchemy_writes(ast.parse("conn.execute(insert(ledger_entries))"), "ledger_entries")
    assert _sqlalchemy_writes(ast.parse("sa.delete(tasks)"), "tasks")
    assert not _sqlalchemy_writes(ast.parse("select(customers.c.id)"), "customers")


# ---- the test suite's own shape ---------------------------------------------------------------------------

TESTS = ROOT / "tests"
#: Modules every test may import: the factories, the fixture plugins (``tests/fix_*.py``) and conftest modules.
SHARED_TEST_MODULES = ("tests.factories", "tests.fix_")


def _shared(name: str) -> bool:
    return name.startswith(SHARED_TEST_MODULES) or name.split(".")[-1] == "conftest" or ".conftest." in name


def test_no_test_module_imports_another() -> None:
    """Test modules import only the shared factories and fixture modules, never each other."""
    offenders = sorted(
        f"{_rel(path)} imports {name}"
        for path in TESTS.rglob("test_*.py")
        for name in _imported_modules(path)
        if name.startswith("tests.") and not _shared(name))
    assert offenders == []


def test_ledgers_are_seeded_only_by_the_factories() -> None:
    """No test module has a helper of its own (a function that is not a test) writing customers or entries:
    seeding lives in tests/factories.py."""
    offenders = []
    for path in TESTS.rglob("test_*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("test_"):
                continue
            source = ast.unparse(node)
            if (_sql_writes(source, "customers") or _sql_writes(source, "customer_ledger_entries")
                    or _sqlalchemy_writes(node, "customers") or _sqlalchemy_writes(node, "ledger_entries")):
                offenders.append(f"{_rel(path)}: {node.name}")
    assert offenders == []
