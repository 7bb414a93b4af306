"""Table definitions for queries (SQLAlchemy Core). The database's shape is owned by the migrations
in ``reconciler/migrations``; these objects describe it for building statements and must agree with it
(a test compares them)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy import text as sql_text
from sqlalchemy.dialects.postgresql import ARRAY, INET, JSONB
from sqlalchemy.dialects.postgresql import base as postgresql_base
from sqlalchemy.types import UserDefinedType

from reconciler import vocabulary

SCHEMA = "reconciler"
MONEY = Numeric(18, 2, asdecimal=True)
#: Totals over many customers can exceed a single balance's range.
TOTAL = Numeric(24, 2, asdecimal=True)

metadata = MetaData()

customers = Table(
    "customers",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("balance", MONEY, nullable=False),
    Column("updated_at", DateTime(timezone=True)),
)

ledger_entries = Table(
    "customer_ledger_entries",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("customer_id", BigInteger, ForeignKey("customers.id"), nullable=False),
    Column("amount", MONEY, nullable=False),
    Column("kind", Text, nullable=False),
    Column("reference", Text),
    Column("idempotency_key", Text),
    Column("balance_after", MONEY),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ux_customer_ledger_entries_idempotency_key", "idempotency_key", unique=True),
    #: The real-time chain check and the per-customer SUM read only this index (index-only scans).
    Index("ix_customer_ledger_entries_customer_cover", "customer_id", "id", postgresql_include=["amount"]),
)

runs = Table(
    "runs",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("status", Text, nullable=False),
    Column("trigger", Text, nullable=False),
    Column("params", JSONB, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    Column("customers_checked", BigInteger, nullable=False),
    Column("drift_count", BigInteger, nullable=False),
    Column("total_abs_drift", TOTAL, nullable=False),
    Column("chunk_count", Integer),
    Column("outcome", JSONB, nullable=False),
    Column("error", Text),
    Column("run_key", Text),  # migration 0004: an orchestrator's key, unique among running runs
    # migration 0009: incremental or full, why, and the verified points (pg_snapshot text) started from and reached
    Column("mode", Text),
    Column("mode_reason", Text),
    Column("verified_from", Text),
    Column("verified_to", Text),
    Index("ux_runs_running_key", "run_key", unique=True,
          postgresql_where=sql_text("status = 'running' and run_key is not null")),
    schema=SCHEMA,
)

run_chunks = Table(
    "run_chunks",
    metadata,
    Column("run_id", BigInteger, ForeignKey(f"{SCHEMA}.runs.id", ondelete="CASCADE"), primary_key=True),
    Column("chunk_index", Integer, primary_key=True),
    Column("first_id", BigInteger, nullable=False),
    Column("last_id", BigInteger, nullable=False),
    Column("planned_customers", BigInteger, nullable=False),
    Column("status", Text, nullable=False),
    Column("customers_checked", BigInteger),
    Column("drift_count", BigInteger),
    Column("compared_at", DateTime(timezone=True)),
    Column("customer_ids", ARRAY(BigInteger)),  # migration 0009: an incremental chunk compares only these
    # migration 0008: totals of the comparison statement itself (the report's tie-out, no second pass)
    Column("compared_customers", BigInteger),
    Column("balance_total", TOTAL),
    Column("ledger_total", TOTAL),
    Column("snapshot", Text),
    schema=SCHEMA,
)

findings = Table(
    "findings",
    metadata,
    Column("run_id", BigInteger, ForeignKey(f"{SCHEMA}.runs.id", ondelete="CASCADE"), primary_key=True),
    Column("customer_id", BigInteger, primary_key=True),
    Column("chunk_index", Integer, nullable=False),
    Column("stored_balance", MONEY, nullable=False),
    Column("ledger_sum", MONEY, nullable=False),
    Column("drift", MONEY, nullable=False),
    Column("cause", Text),
    Column("evidence", JSONB),
    Column("found_at", DateTime(timezone=True), nullable=False),
    schema=SCHEMA,
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("run_id", BigInteger, ForeignKey(f"{SCHEMA}.runs.id")),
    # No ForeignKey: its KEY SHARE check would wait on a customer locked by a service (migration 0005
    # keeps the reference with lock-free triggers instead).
    Column("customer_id", BigInteger, nullable=False),
    Column("stored_balance", MONEY, nullable=False),
    Column("ledger_sum", MONEY, nullable=False),
    Column("drift", MONEY, nullable=False),
    Column("status", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("cause", Text),
    Column("evidence", JSONB),
    Column("opened_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("last_seen_run_id", BigInteger),
    Column("resolved_at", DateTime(timezone=True)),
    Column("resolution", JSONB, nullable=False),
    Column("correction_entry_id", BigInteger),
    #: At most one unresolved task per customer.
    Index("ux_tasks_one_unresolved_per_customer", "customer_id", unique=True,
          postgresql_where=sql_text("status in ('open', 'needs_review')")),
    Index("ix_tasks_run", "run_id"),
    Index("ix_tasks_status", "status"),
    Index("ix_tasks_last_seen_run", "last_seen_run_id"),
    schema=SCHEMA,
)

quality_results = Table(
    "quality_results",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("run_id", BigInteger, ForeignKey(f"{SCHEMA}.runs.id", ondelete="CASCADE")),
    Column("suite", Text, nullable=False),
    Column("expectation", Text, nullable=False),
    Column("success", Boolean, nullable=False),
    Column("details", JSONB, nullable=False),
    Column("evaluated_at", DateTime(timezone=True), nullable=False),
    Index("ix_quality_results_run", "run_id"),
    schema=SCHEMA,
)

#: migration 0008: an expectation's unexpected rows, computed once per check and read back by GX (unlogged,
#: deleted by the check that wrote them; written only by reconciler.quality).
quality_unexpected = Table(
    "quality_unexpected",
    metadata,
    Column("check_key", Text, primary_key=True),
    Column("expectation", Text, primary_key=True),
    Column("ordinal", BigInteger, primary_key=True),
    Column("row", JSONB, nullable=False),
    schema=SCHEMA,
    prefixes=["UNLOGGED"],
)

demo_plants = Table(
    "demo_plants",
    metadata,
    Column("customer_id", BigInteger, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("drift", MONEY, nullable=False),
    Column("entry_id", BigInteger),
    Column("seed", BigInteger, nullable=False),
    schema=SCHEMA,
)

#: Writes made around the balance core, as the guard recorded them (migration 0006; ``reconciler/guard.py``).
#: No foreign key to customers: the guard never waits on a customer's row lock.
bypass_writes = Table(
    "bypass_writes",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("txid", BigInteger, nullable=False),
    Column("table_name", Text, nullable=False),
    Column("operation", Text, nullable=False),
    Column("customer_id", BigInteger),
    Column("old_balance", MONEY),
    Column("new_balance", MONEY),
    Column("delta", Numeric(20, 2, asdecimal=True)),
    Column("entry_id", BigInteger),
    Column("amount", MONEY),
    Column("application_name", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("client_addr", INET),
    Column("backend_pid", Integer, nullable=False),
    Column("statement", Text),
    Column("fingerprint", Text),
    Column("breaks_ledger", Boolean),
    Column("refused", Boolean, nullable=False),
    Index("ix_bypass_writes_at", "at"),
    Index("ix_bypass_writes_customer", "customer_id", "txid"),
    schema=SCHEMA,
)

RUN_STATUSES = ("running", "succeeded", "failed", "halted")
RUN_TRIGGERS = ("scheduled", "manual", "cli")
TASK_STATUSES = vocabulary.TASK_STATUSES
UNRESOLVED_STATUSES = ("open", "needs_review")
TASK_SOURCES = ("run", "realtime", "bypass")

#: The balance core's reconciliation log (migration 0002): one row per ``reconcile_balance`` call, with
#: old and new values; it is also the idempotency record of a reconciliation and the anchor of the
#: ``balance_after`` chain (``chain_entry_id``: the latest entry when the balance was settled).
balance_reconciliations = Table(
    "balance_reconciliations",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("customer_id", BigInteger, ForeignKey("customers.id"), nullable=False),
    Column("policy", Text, nullable=False),
    Column("idempotency_key", Text),
    Column("reference", Text),
    Column("stored_before", MONEY, nullable=False),
    Column("ledger_sum", MONEY, nullable=False),
    Column("drift_before", MONEY, nullable=False),
    Column("balance_after", MONEY, nullable=False),
    Column("entry_id", BigInteger),
    Column("chain_entry_id", BigInteger),
    Column("changed", Boolean, nullable=False),
    Column("audit", JSONB, nullable=False),
    Column("reconciled_at", DateTime(timezone=True), nullable=False),
    Index("ux_balance_reconciliations_idempotency_key", "idempotency_key", unique=True),
    Index("ix_balance_reconciliations_customer", "customer_id", "id"),
    schema=SCHEMA,
)

#: What migration 0001 added to an adopted ledger (so a downgrade removes exactly that).
adoption = Table(
    "adoption",
    metadata,
    Column("table_name", Text, primary_key=True),
    Column("created", Boolean, nullable=False),
    Column("added_columns", ARRAY(Text), nullable=False),
    Column("adopted_at", DateTime(timezone=True), nullable=False),
    schema=SCHEMA,
)

#: The hash-chained audit trail (migration 0007): appended only by the database (``reconciler.append_audit``
#: queues, a deferred trigger chains at commit; :mod:`reconciler.audit`), never updated or deleted.
audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kind", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("prev_hash", Text, nullable=False),
    Column("hash", Text, nullable=False),
    UniqueConstraint("hash", name="ux_audit_log_hash"),
    UniqueConstraint("prev_hash", name="ux_audit_log_prev_hash"),
    schema=SCHEMA,
)

#: The chain's end (one row): the lock every append takes at commit, and the length and hash verify expects.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Boolean, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", Text, nullable=False),
    Column("moved_at", DateTime(timezone=True), nullable=False),
    schema=SCHEMA,
)

#: Events queued by a transaction until its commit chains them (unlogged; never holds a committed row).
audit_queue = Table(
    "audit_queue",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("txid", BigInteger, nullable=False),
    Column("kind", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("data", JSONB, nullable=False),
    Index("ix_audit_queue_txid", "txid", "id"),
    schema=SCHEMA,
)


class XID8(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id (``pg_current_xact_id()``)."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "xid8"


# Reflection (the schema test, Alembic's autogenerate) knows the type by name.
postgresql_base.ischema_names.setdefault("xid8", XID8)


#: The change feed of incremental runs (migration 0009; ``reconciler/change_feed.py``): one row per customer
#: per transaction that touched it. No foreign key to customers: a feed write never waits on a row lock.
change_feed = Table(
    "change_feed",
    metadata,
    Column("xid", XID8(), primary_key=True),
    Column("customer_id", BigInteger, primary_key=True),
    schema=SCHEMA,
)

#: The verified point (one row): every change committed in this snapshot has been compared.
verified_point = Table(
    "verified_point",
    metadata,
    Column("id", Boolean, primary_key=True),
    Column("snapshot", Text, nullable=False),
    Column("run_id", BigInteger),
    Column("verified_at", DateTime(timezone=True), nullable=False),
    schema=SCHEMA,
)

#: ``ALTER TABLE``s of the guarded tables since the last full verified run (migration 0012, filled by an event
#: trigger): a trigger disabled and enabled again reads as enabled, so a pending row makes the next run full.
feed_gaps = Table(
    "feed_gaps",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("xid", XID8(), nullable=False),
    Column("table_name", Text, nullable=False),
    Column("command_tag", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("application_name", Text),
    Column("statement", Text),
    schema=SCHEMA,
)
