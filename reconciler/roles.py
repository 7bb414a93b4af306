"""Least privilege: the three NOLOGIN roles a company grants to its own logins, and exactly what each may do.

- ``reconciler_reader``: SELECT on the ledger and on every table of the ``reconciler`` schema. All that
  comparisons, explanations, quality checks, reports and ``audit verify`` need.
- ``reconciler_core``: what :mod:`reconciler.balances` needs: read customers, update their ``balance`` and
  ``updated_at`` columns only, read and insert ledger entries, write its own realtime task rows, its
  reconciliation log and (with the guard) its bypass rows, and append to the audit chain. No UPDATE or
  DELETE of entries, no TRUNCATE, and it owns nothing, so it cannot DROP.
- ``reconciler_operator``: runs, run chunks, findings, tasks and quality results, plus ``reconciler_reader``
  and ``reconciler_core`` (a run corrects through the core).

Invariant: :func:`apply_roles` is idempotent and exact. In ONE transaction it creates the roles that are
missing, revokes everything the three roles hold on the ledger, the ``reconciler`` schema and the audit
function, then grants :func:`plan_grants`; running it again changes nothing. Migrations never call it:
roles are cluster-wide, and adopting a ledger must not change anyone's privileges unless ``db roles`` is run.
Nothing is granted to the company's own roles: a company grants these roles to its logins itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text

from reconciler.errors import InvalidOperationError

READER = "reconciler_reader"
CORE = "reconciler_core"
OPERATOR = "reconciler_operator"
ROLES = (READER, CORE, OPERATOR)
SCHEMA = "reconciler"
LEDGER_TABLES = ("customers", "customer_ledger_entries")
AUDIT_FUNCTION = "reconciler.append_audit(jsonb)"

#: reconciler tables the core writes, and how (realtime tasks, its reconciliation log, the guard's rows).
CORE_TABLES = {"balance_reconciliations": ("SELECT", "INSERT"), "tasks": ("SELECT", "INSERT"),
               "bypass_writes": ("SELECT", "INSERT")}
#: reconciler tables an operator's run writes, and how.
OPERATOR_TABLES = {"runs": ("SELECT", "INSERT", "UPDATE"), "run_chunks": ("SELECT", "INSERT", "UPDATE"),
                   "findings": ("SELECT", "INSERT", "UPDATE"), "tasks": ("SELECT", "INSERT", "UPDATE"),
                   "quality_results": ("SELECT", "INSERT", "DELETE"),
                   # migration 0008: a check's unexpected rows, staged once and deleted by the same check
                   "quality_unexpected": ("SELECT", "INSERT", "DELETE"),
                   # incremental runs: a finished run moves the verified point and prunes the feed it covers
                   "verified_point": ("SELECT", "INSERT", "UPDATE"), "change_feed": ("SELECT", "DELETE"),
                   # migration 0012: a full run prunes the ledger ALTERs its snapshot covered
                   "feed_gaps": ("SELECT", "DELETE")}


@dataclass(frozen=True)
class Grant:
    """One privilege given to one role: ``GRANT {privilege} ON {target} TO {role}``."""

    role: str
    privilege: str
    target: str

    def sql(self) -> str:
        if self.privilege == "MEMBER":
            return f"GRANT {self.target} TO {self.role}"
        return f"GRANT {self.privilege} ON {self.target} TO {self.role}"

    def to_json(self) -> dict[str, str]:
        return {"role": self.role, "privilege": self.privilege, "on": self.target}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def plan_grants(ledger_schema: str, reconciler_tables: Sequence[str],
                entry_sequences: Sequence[str] = ()) -> tuple[Grant, ...]:
    """Every grant of the three roles for a database whose ledger lives in ``ledger_schema`` and whose
    ``reconciler`` schema holds ``reconciler_tables`` (pure: the same inputs give the same grants).
    ``entry_sequences`` are sequences behind the entries' id (an adopted ``serial``; identity needs none)."""
    ledger = _quote(ledger_schema)
    customers = f"{ledger}.customers"
    entries = f"{ledger}.customer_ledger_entries"
    present = set(reconciler_tables)
    schemas = [f"SCHEMA {ledger}"] + ([f"SCHEMA {SCHEMA}"] if ledger_schema != SCHEMA else [])
    grants: list[Grant] = []
    for role in ROLES:
        grants += [Grant(role, "USAGE", schema) for schema in schemas]
    grants += [Grant(READER, "SELECT", customers), Grant(READER, "SELECT", entries)]
    grants += [Grant(READER, "SELECT", f"{SCHEMA}.{_quote(t)}") for t in sorted(present)]
    grants += [Grant(CORE, "SELECT", customers), Grant(CORE, "UPDATE (balance, updated_at)", customers),
               Grant(CORE, "SELECT", entries), Grant(CORE, "INSERT", entries)]
    grants += [Grant(CORE, "USAGE", f"SEQUENCE {sequence}") for sequence in entry_sequences]
    grants += [Grant(CORE, privilege, f"{SCHEMA}.{_quote(t)}")
               for t, privileges in CORE_TABLES.items() if t in present for privilege in privileges]
    grants += [Grant(CORE, "EXECUTE", f"FUNCTION {AUDIT_FUNCTION}")]
    grants += [Grant(OPERATOR, "MEMBER", READER), Grant(OPERATOR, "MEMBER", CORE)]
    grants += [Grant(OPERATOR, privilege, f"{SCHEMA}.{_quote(t)}")
               for t, privileges in OPERATOR_TABLES.items() if t in present for privilege in privileges]
    return tuple(grants)


@dataclass(frozen=True)
class RolesResult:
    """What :func:`apply_roles` did: the roles it created (the others existed) and every grant it holds now."""

    created: tuple[str, ...]
    grants: tuple[Grant, ...]

    def to_json(self) -> dict[str, object]:
        return {"roles": {role: {"created": role in self.created, "login": False,
                                 "grants": [g.to_json() for g in self.grants if g.role == role]} for role in ROLES},
                "statements": [g.sql() for g in self.grants]}


def _create_missing(conn: Connection) -> tuple[str, ...]:
    created = []
    for role in ROLES:
        exists = conn.execute(text("select 1 from pg_roles where rolname = :r"), {"r": role}).scalar()
        if exists:
            conn.execute(text(f"alter role {role} nologin"))
            continue
        # Roles are cluster-wide: another database's `db roles` may create it at the same moment.
        conn.execute(text(f"""do $$ begin create role {role} nologin;
                              exception when duplicate_object or unique_violation then null; end $$"""))
        created.append(role)
    return tuple(created)


def _inspect(conn: Connection) -> tuple[str, list[str], list[str]]:
    schema = conn.execute(text("""select n.nspname from pg_class c join pg_namespace n on n.oid = c.relnamespace
                                  where c.oid = to_regclass('customer_ledger_entries')""")).scalar()
    if schema is None or conn.execute(text("select to_regclass('reconciler.audit_log')")).scalar() is None:
        raise InvalidOperationError("the ledger database is not migrated (no customer_ledger_entries or "
                                    "reconciler.audit_log); run `reconciler db upgrade` first, then `db roles`")
    tables = list(conn.execute(text("""select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
                                       where n.nspname = 'reconciler' and c.relkind in ('r', 'p', 'v')
                                       order by c.relname""")).scalars())
    entries = f"{_quote(str(schema))}.customer_ledger_entries"
    # An adopted ``serial`` id needs USAGE on its sequence to insert; an identity column needs none.
    serial = conn.execute(text("""
        select pg_get_serial_sequence(:t, 'id') from pg_attribute a
        where a.attrelid = to_regclass(:t) and a.attname = 'id' and a.attidentity = ''"""), {"t": entries}).scalar()
    sequences = [str(serial)] if serial else []
    return str(schema), tables, sequences


def apply_roles(engine: Engine) -> RolesResult:
    """Create the missing roles and make their privileges exactly :func:`plan_grants` (one transaction)."""
    with engine.begin() as conn:
        created = _create_missing(conn)
        schema, tables, sequences = _inspect(conn)
        grants = plan_grants(schema, tables, sequences)
        everyone = ", ".join(ROLES)
        ledger = _quote(schema)
        conn.execute(text(f"revoke all on all tables in schema {SCHEMA} from {everyone}"))
        conn.execute(text(f"revoke all on {ledger}.customers, {ledger}.customer_ledger_entries from {everyone}"))
        conn.execute(text(f"revoke all on function {AUDIT_FUNCTION} from {everyone}"))
        for grant in grants:
            conn.execute(text(grant.sql()))
    return RolesResult(created, grants)
