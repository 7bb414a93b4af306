"""The census of writers around the core, read from ``reconciler.bypass_writes``: who wrote balances or
ledger entries without ``reconciler.balances``, through which code path (fingerprint), how often and how
much money they moved around the ledger; and the bypass writes behind one customer's drift.

Read-only. Amounts are the database's ``numeric`` sums as ``Decimal``. ``delta`` of a bypass write is the
change it made to the customer's balance (``customers``) or to its ledger sum (entries).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import Connection, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import BigInteger

from reconciler.errors import RunNotFoundError
from reconciler.money import ZERO, format_money

#: Bypass writes named per drifting customer in its explanation.
MAX_WRITES_PER_CUSTOMER = 5
EXAMPLE_LIMIT = 300


@dataclass(frozen=True)
class Writer:
    """One code path writing around the core: (application_name, role, fingerprint) and what it did."""

    application_name: str
    role: str
    fingerprint: str | None
    writes: int
    customers: int
    net_amount: Decimal
    abs_amount: Decimal
    broke_ledger: int
    refused: int
    first_seen: dt.datetime
    last_seen: dt.datetime
    example_statement: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "application_name": self.application_name, "role": self.role, "fingerprint": self.fingerprint,
            "writes": self.writes, "customers": self.customers, "net_amount": str(self.net_amount),
            "abs_amount": str(self.abs_amount), "broke_ledger": self.broke_ledger, "refused": self.refused,
            "first_seen": self.first_seen.isoformat(), "last_seen": self.last_seen.isoformat(),
            "example_statement": self.example_statement,
        }


@dataclass(frozen=True)
class Window:
    """Bypass writes with ``since <= at < until`` (either end open when None)."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    run_id: int | None = None
    previous_run_id: int | None = None

    def describe(self) -> str:
        if self.run_id is not None:
            if self.previous_run_id is None:
                return f"everything recorded before run {self.run_id} started"
            return f"from the start of run {self.previous_run_id} to the start of run {self.run_id}"
        if self.since is not None:
            return f"since {self.since.isoformat()}"
        return "everything the guard recorded"


_CENSUS = text("""
with grouped as (
    select w.application_name, w.role, w.fingerprint, count(*) as writes,
           count(distinct w.customer_id) as customers,
           coalesce(sum(w.delta), 0) as net_amount, coalesce(sum(abs(w.delta)), 0) as abs_amount,
           count(*) filter (where w.breaks_ledger) as broke_ledger, count(*) filter (where w.refused) as refused,
           min(w.at) as first_seen, max(w.at) as last_seen, max(w.id) as example_id
    from reconciler.bypass_writes w
    where (cast(:since as timestamptz) is null or w.at >= cast(:since as timestamptz))
      and (cast(:until as timestamptz) is null or w.at < cast(:until as timestamptz))
    group by w.application_name, w.role, w.fingerprint
)
select g.*, left(e.statement, :example_limit) as example_statement
from grouped g join reconciler.bypass_writes e on e.id = g.example_id
order by g.abs_amount desc, g.writes desc, g.application_name, g.role, g.fingerprint
""")


def census(conn: Connection, window: Window = Window()) -> list[Writer]:
    """One :class:`Writer` per (application_name, role, fingerprint) in ``window``, largest absolute amount first."""
    rows = conn.execute(_CENSUS, {"since": window.since, "until": window.until, "example_limit": EXAMPLE_LIMIT})
    return [Writer(r.application_name, r.role, r.fingerprint, int(r.writes), int(r.customers),
                   Decimal(r.net_amount), Decimal(r.abs_amount), int(r.broke_ledger), int(r.refused),
                   r.first_seen, r.last_seen, r.example_statement) for r in rows]


def run_window(conn: Connection, run_id: int) -> Window:
    """The bypass writes a run reports: from the previous run's start to this run's start, so consecutive
    runs' windows never overlap and a write made before a run belongs to that run."""
    row = conn.execute(text("""
        select r.started_at, (select p.id from reconciler.runs p where p.id < r.id order by p.id desc limit 1)
                             as previous_id,
               (select p.started_at from reconciler.runs p where p.id < r.id order by p.id desc limit 1)
                             as previous_started_at
        from reconciler.runs r where r.id = :run"""), {"run": run_id}).one_or_none()
    if row is None:
        raise RunNotFoundError(f"run {run_id} does not exist; list runs with `reconciler tasks list` or start one "
                               f"with `reconciler run`")
    return Window(row.previous_started_at, row.started_at, run_id, row.previous_id)


def totals(writers: Sequence[Writer]) -> tuple[int, Decimal, Decimal]:
    """(writes, net amount, absolute amount) over a census (pure)."""
    return (sum(w.writes for w in writers), sum((w.net_amount for w in writers), ZERO),
            sum((w.abs_amount for w in writers), ZERO))


# ---- the bypass writes behind a drift ------------------------------------------------------------------


@dataclass(frozen=True)
class SeenWrite:
    """A bypass write of one customer, as an explanation names it."""

    id: int
    at: dt.datetime
    application_name: str
    role: str
    fingerprint: str | None
    table_name: str
    operation: str
    delta: Decimal | None
    breaks_ledger: bool | None

    def to_json(self) -> dict[str, object]:
        return {"bypass_write_id": self.id, "at": self.at.isoformat(), "application_name": self.application_name,
                "role": self.role, "fingerprint": self.fingerprint, "table_name": self.table_name,
                "operation": self.operation, "delta": None if self.delta is None else str(self.delta),
                "breaks_ledger": self.breaks_ledger}


_SEEN = text("""
select w.id, w.at, w.customer_id, w.application_name, w.role, w.fingerprint, w.table_name, w.operation, w.delta,
       w.breaks_ledger
from unnest(cast(:ids as bigint[])) as d (customer_id)
cross join lateral (
    select b.* from reconciler.bypass_writes b
    where b.customer_id = d.customer_id and not b.refused
      and b.at > coalesce((select max(r.reconciled_at) from reconciler.balance_reconciliations r
                           where r.customer_id = d.customer_id and r.changed), '-infinity')
    order by b.id desc limit :per_customer) as w
order by w.customer_id, w.id desc
""").bindparams(bindparam("ids", type_=ARRAY(BigInteger)))


def seen_writes(conn: Connection, customer_ids: Sequence[int]) -> dict[int, list[SeenWrite]]:
    """The latest bypass writes of each customer since its balance was last settled by the core (newest first)."""
    if not customer_ids:
        return {}
    found: dict[int, list[SeenWrite]] = {}
    for r in conn.execute(_SEEN, {"ids": list(customer_ids), "per_customer": MAX_WRITES_PER_CUSTOMER}):
        found.setdefault(int(r.customer_id), []).append(SeenWrite(
            int(r.id), r.at, r.application_name, r.role, r.fingerprint, r.table_name, r.operation,
            None if r.delta is None else Decimal(r.delta), r.breaks_ledger))
    return found


def describe_write(write: SeenWrite) -> str:
    app = write.application_name or "(no application_name)"
    what = "customers.balance" if write.table_name == "customers" else write.table_name
    delta = "" if write.delta is None else f" ({format_money(write.delta)})"
    return (f"{write.operation} of {what}{delta} by {app} (role {write.role}) at "
            f"{write.at.astimezone(dt.UTC):%Y-%m-%d %H:%M:%SZ}")


def with_writers(evidence: Mapping[str, object], summary: str, writes: Sequence[SeenWrite]
                 ) -> tuple[dict[str, object], str]:
    """An explanation's evidence and sentence, naming the bypass writes the guard saw (pure)."""
    if not writes:
        return dict(evidence), summary
    named = "; ".join(describe_write(w) for w in writes[:2])
    more = f" and {len(writes) - 2} more" if len(writes) > 2 else ""
    return ({**evidence, "writers": [w.to_json() for w in writes]},
            f"{summary}. The guard saw it written around the core: {named}{more}")

