"""The three roles' grants, pure: exactly what each needs, never a write the role should not have."""

from __future__ import annotations

from reconciler.roles import CORE, OPERATOR, READER, ROLES, Grant, plan_grants

TABLES = ("audit_head", "audit_log", "audit_queue", "balance_reconciliations", "findings", "quality_results",
          "run_chunks", "runs", "tasks")


def grants_of(role: str, grants: tuple[Grant, ...]) -> set[tuple[str, str]]:
    return {(g.privilege, g.target) for g in grants if g.role == role}


def test_the_reader_only_reads() -> None:
    """reconciler_reader: USAGE on the schemas and SELECT on the ledger and every reconciler table, nothing else."""
    reader = grants_of(READER, plan_grants("public", TABLES))
    assert {p for p, _ in reader} == {"USAGE", "SELECT"}
    assert ("SELECT", '"public".customer_ledger_entries') in reader
    assert {t for p, t in reader if p == "SELECT"} >= {f'reconciler."{t}"' for t in TABLES}


def test_the_core_never_rewrites_history_or_bookkeeping() -> None:
    """reconciler_core: UPDATE only on the balance columns, INSERT on entries, its own rows, the audit function;
    no UPDATE, DELETE or TRUNCATE of entries and nothing on runs, findings or the audit tables."""
    core = grants_of(CORE, plan_grants("public", TABLES))
    assert ("UPDATE (balance, updated_at)", '"public".customers') in core
    assert ("INSERT", '"public".customer_ledger_entries') in core
    assert not {(p, t) for p, t in core if t.endswith("customer_ledger_entries") and p not in ("SELECT", "INSERT")}
    assert {t for _, t in core if t.startswith("reconciler.")} == {'reconciler."balance_reconciliations"',
                                                                   'reconciler."tasks"'}
    assert ("EXECUTE", "FUNCTION reconciler.append_audit(jsonb)") in core
    assert not any(p in ("DELETE", "TRUNCATE") for p, _ in core)


def test_the_operator_is_reader_plus_core_plus_bookkeeping() -> None:
    """reconciler_operator: member of the other two, writes runs, chunks, findings, tasks and quality results;
    never the audit tables (only through the core's function) and never DELETE outside quality_results."""
    operator = grants_of(OPERATOR, plan_grants("public", TABLES))
    assert {("MEMBER", READER), ("MEMBER", CORE)} <= operator
    assert ("UPDATE", 'reconciler."tasks"') in operator and ("DELETE", 'reconciler."quality_results"') in operator
    assert not any("audit" in t for _, t in operator)
    assert {t for p, t in operator if p == "DELETE"} == {'reconciler."quality_results"'}


def test_grants_follow_what_exists() -> None:
    """The guard's bypass_writes is granted only once it exists; an adopted serial id's sequence is granted to the
    core; only the three roles ever receive a grant; the same inputs give the same grants."""
    without = plan_grants("public", TABLES)
    with_guard = plan_grants("public", (*TABLES, "bypass_writes"), ("public.customer_ledger_entries_id_seq",))
    assert not any("bypass_writes" in g.target for g in without)
    assert {("SELECT", 'reconciler."bypass_writes"'), ("INSERT", 'reconciler."bypass_writes"'),
            ("USAGE", "SEQUENCE public.customer_ledger_entries_id_seq")} <= grants_of(CORE, with_guard)
    assert {g.role for g in with_guard} == set(ROLES)
    assert plan_grants("public", TABLES) == without
    assert Grant(OPERATOR, "MEMBER", CORE).sql() == "GRANT reconciler_core TO reconciler_operator"
