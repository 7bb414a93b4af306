"""THE test factories (every test module seeds through these; no test module imports another): they read like
a small ledger. They write rows directly, around the balance core, on purpose: that is how tests plant the
drift the product must find, and how the report tests script a history of runs."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import Engine, func, insert, select, text, update

from reconciler.schema import customers, ledger_entries


def make_customer(engine: Engine, customer_id: int, balance: str | Decimal = "0.00") -> int:
    """Insert a customer with a cached balance (no ledger entries)."""
    with engine.begin() as conn:
        conn.execute(insert(customers).values(id=customer_id, balance=Decimal(balance), updated_at=func.now()))
    return customer_id


def post_entry(engine: Engine, customer_id: int, amount: str | Decimal, *, kind: str = "payment",
               balance_after: str | Decimal | None = None, idempotency_key: str | None = None) -> int:
    """Append a ledger entry WITHOUT touching the cached balance (a write that bypassed the core)."""
    with engine.begin() as conn:
        return int(conn.execute(
            insert(ledger_entries)
            .values(customer_id=customer_id, amount=Decimal(amount), kind=kind,
                    balance_after=None if balance_after is None else Decimal(balance_after),
                    idempotency_key=idempotency_key)
            .returning(ledger_entries.c.id)
        ).scalar_one())


def set_cached_balance(engine: Engine, customer_id: int, balance: str | Decimal) -> None:
    """Overwrite the cached balance around the ledger (the classic source of drift)."""
    with engine.begin() as conn:
        conn.execute(update(customers).where(customers.c.id == customer_id).values(balance=Decimal(balance)))


def cached_balance(engine: Engine, customer_id: int) -> Decimal:
    with engine.connect() as conn:
        return Decimal(conn.execute(select(customers.c.balance).where(customers.c.id == customer_id)).scalar_one())


def ledger_sum(engine: Engine, customer_id: int) -> Decimal:
    with engine.connect() as conn:
        total = conn.execute(select(func.coalesce(func.sum(ledger_entries.c.amount), 0))
                             .where(ledger_entries.c.customer_id == customer_id)).scalar_one()
    return Decimal(total)


def entry_count(engine: Engine, customer_id: int | None = None) -> int:
    query = select(func.count()).select_from(ledger_entries)
    if customer_id is not None:
        query = query.where(ledger_entries.c.customer_id == customer_id)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def make_drifting_customer(engine: Engine, customer_id: int, total: str = "100.00", drift: str = "0.00") -> int:
    """A customer with one entry of ``total`` (balance_after set) and a cached balance of total + drift."""
    make_customer(engine, customer_id)
    post_entry(engine, customer_id, total, balance_after=total)
    set_cached_balance(engine, customer_id, Decimal(total) + Decimal(drift))
    return customer_id


def ledger_customer(engine: Engine, customer_id: int, amounts: tuple[str, ...] = ("100.00",),
                    drift: str = "0.00") -> int:
    """A customer whose entries (with a correct balance_after chain) sum to S and whose balance is S + drift."""
    running = Decimal("0.00")
    make_customer(engine, customer_id, "0.00")
    for amount in amounts:
        running += Decimal(amount)
        post_entry(engine, customer_id, amount, balance_after=running)
    set_cached_balance(engine, customer_id, running + Decimal(drift))
    return customer_id


def load_ledger(engine: Engine, ledger: Mapping[int, tuple[Decimal, Sequence[Decimal]]]) -> None:
    """Insert customers {id: (balance, [entry amounts])} in two statements (entries without balance_after)."""
    with engine.begin() as conn:
        if ledger:
            conn.execute(insert(customers), [{"id": cid, "balance": bal} for cid, (bal, _) in ledger.items()])
        entries = [{"customer_id": cid, "amount": a, "kind": "payment"} for cid, (_, amounts) in ledger.items()
                   for a in amounts]
        if entries:
            conn.execute(insert(ledger_entries), entries)


def seed_uniform_ledger(engine: Engine, customers: int, drifting: range) -> None:
    """``customers`` customers with 3 entries each (balance == sum), then +1.50 on the ``drifting`` ones."""
    with engine.begin() as conn:
        conn.execute(text("insert into customers (id, balance) select g, 60.00 from generate_series(1, :n) g"),
                     {"n": customers})
        conn.execute(text("""insert into customer_ledger_entries (customer_id, amount, kind, balance_after)
                             select g, 20.00, 'deposit', 20.00 * k
                             from generate_series(1, :n) g, generate_series(1, 3) k order by g, k"""),
                     {"n": customers})
        conn.execute(text("update customers set balance = balance + 1.50 where id between :a and :b"),
                     {"a": drifting.start, "b": drifting.stop - 1})


def seed_thirty_customers(engine: Engine, planted: Mapping[int, Decimal], *, plant: bool = True,
                          customers: int = 30) -> None:
    """Thirty customers with two entries each and an honest balance, then the ``planted`` drifts."""
    for customer in range(1, customers + 1):
        make_customer(engine, customer)
        post_entry(engine, customer, Decimal(customer * 10) + Decimal("0.25"))
        post_entry(engine, customer, Decimal("-3.10"))
        set_cached_balance(engine, customer, ledger_sum(engine, customer))
    for customer, drift in (planted.items() if plant else ()):
        set_cached_balance(engine, customer, ledger_sum(engine, customer) + drift)


def make_company_ledger(engine: Engine) -> None:
    """A company's own ledger as it exists before reconciler adopts it: no balance_after, kind or
    idempotency_key, an extra column on each table, two customers."""
    with engine.begin() as conn:
        conn.execute(text("""
            create table customers (id bigint primary key, balance numeric(18,2) not null default 0,
                                    email text not null);
            create table customer_ledger_entries (id bigserial primary key,
                customer_id bigint not null references customers, amount numeric(18,2) not null,
                note text);
            insert into customers values (1, 10.00, 'a@example.com'), (2, 7.50, 'b@example.com');
            insert into customer_ledger_entries (customer_id, amount, note)
                values (1, 10.00, 'opening'), (2, 5.00, 'opening');
        """))


# ---- a scripted history of runs, findings and tasks (the report's tests) ----------------------------------

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


@dataclass(frozen=True)
class History:
    """The run ids and task ids of :func:`scripted_history`."""

    runs: tuple[int, int, int]
    tasks: dict[str, int]


def chained_customer(engine: Engine, customer_id: int, amounts: list[str], drift: str = "0.00") -> None:
    """A customer with a consistent chain of entries and a cached balance off by ``drift``."""
    total = Decimal("0.00")
    entries = []
    for amount in amounts:
        total += Decimal(amount)
        entries.append((amount, total))
    make_customer(engine, customer_id, total + Decimal(drift))
    for amount, after in entries:
        post_entry(engine, customer_id, amount, balance_after=after)


def recorded_run(engine: Engine, started: dt.datetime, drift_count: int, total_abs: str,
                 status: str = "succeeded") -> int:
    """A finished run row as a report reads it (6 customers checked, five minutes long)."""
    with engine.begin() as conn:
        return int(conn.execute(text("""
            insert into reconciler.runs (status, trigger, params, started_at, finished_at, heartbeat_at,
                                         customers_checked, drift_count, total_abs_drift)
            values (:status, 'scheduled', '{"tolerance": "0.01", "policy": "ledger"}', :started,
                    :started + interval '5 minutes', :started, 6, :n, :abs)
            returning id"""), {"status": status, "started": started, "n": drift_count, "abs": Decimal(total_abs)}
        ).scalar_one())


def recorded_finding(engine: Engine, run_id: int, customer_id: int, stored: str, ledger: str, cause: str) -> None:
    """A staged finding of ``run_id``."""
    with engine.begin() as conn:
        conn.execute(text("""
            insert into reconciler.findings (run_id, customer_id, chunk_index, stored_balance, ledger_sum, drift,
                                             cause, evidence, found_at)
            values (:r, :c, 0, :s, :l, :s - :l, :cause, jsonb_build_object('summary', 'why ' || :c), now())"""),
            {"r": run_id, "c": customer_id, "s": Decimal(stored), "l": Decimal(ledger), "cause": cause})


def recorded_task(engine: Engine, run_id: int, customer_id: int, drift: str, status: str, opened: dt.datetime,
                  resolved: dt.datetime | None = None, policy: str | None = None,
                  last_seen: int | None = None) -> int:
    """A task row as a run would have left it."""
    resolution = {"policy": policy} if policy else {}
    with engine.begin() as conn:
        return int(conn.execute(text("""
            insert into reconciler.tasks (run_id, customer_id, stored_balance, ledger_sum, drift, status, opened_at,
                                          updated_at, last_seen_run_id, resolved_at, resolution)
            values (:r, :c, 0, 0, :d, :status, :opened, coalesce(:resolved, :opened), :seen, :resolved,
                    cast(:res as jsonb))
            returning id"""), {"r": run_id, "c": customer_id, "d": Decimal(drift), "status": status, "opened": opened,
                               "resolved": resolved, "seen": last_seen or run_id,
                               "res": json.dumps(resolution)}).scalar_one())


def scripted_history(engine: Engine) -> History:
    """Three runs over six customers. Run 3 (the one reported) finds 3 (needs review since run 1), 5 (dismissed
    in run 2, found again) and 6 (new); 2 and 4 drifted in run 2 and no longer do."""
    chained_customer(engine, 1, ["100.00", "-20.00"])
    chained_customer(engine, 2, ["50.00"])
    chained_customer(engine, 3, ["1000.00", "-0.50"], drift="100.50")
    chained_customer(engine, 4, ["10.00"])
    chained_customer(engine, 5, ["300.00"], drift="-250.00")
    chained_customer(engine, 6, ["1.23", "2.00"], drift="6.77")
    day, hour = dt.timedelta(days=1), dt.timedelta(hours=1)
    r1 = recorded_run(engine, NOW - 10 * day, 3, "108.50")
    recorded_finding(engine, r1, 1, "85.00", "80.00", "balance_written_around_ledger")
    recorded_finding(engine, r1, 2, "47.00", "50.00", "missing_entry")
    recorded_finding(engine, r1, 3, "1100.00", "999.50", "duplicated_entry")
    tasks = {
        "t1": recorded_task(engine, r1, 1, "5.00", "corrected", NOW - 10 * day, NOW - 10 * day + 2 * hour, "ledger"),
        "t2": recorded_task(engine, r1, 2, "-3.00", "open", NOW - 10 * day, last_seen=None),
        "t3": recorded_task(engine, r1, 3, "100.50", "needs_review", NOW - 10 * day),
    }
    r2 = recorded_run(engine, NOW - 3 * day, 4, "353.52")
    for customer, stored, ledger, cause in ((2, "47.00", "50.00", "missing_entry"),
                                            (3, "1100.00", "999.50", "duplicated_entry"),
                                            (4, "10.02", "10.00", "unknown"), (5, "50.00", "300.00", "unknown")):
        recorded_finding(engine, r2, customer, stored, ledger, cause)
    with engine.begin() as conn:
        conn.execute(text("update reconciler.tasks set last_seen_run_id = :r where id in (:a, :b)"),
                     {"r": r2, "a": tasks["t2"], "b": tasks["t3"]})
    tasks["t4"] = recorded_task(engine, r2, 4, "0.02", "corrected", NOW - 3 * day, NOW - 3 * day + hour / 2, "balance")
    tasks["t5"] = recorded_task(engine, r2, 5, "-250.00", "dismissed", NOW - 3 * day, NOW - 2 * day)
    r3 = recorded_run(engine, NOW - 2 * hour, 3, "357.27")
    recorded_finding(engine, r3, 3, "1100.00", "999.50", "duplicated_entry")
    recorded_finding(engine, r3, 5, "50.00", "300.00", "unknown")
    recorded_finding(engine, r3, 6, "10.00", "3.23", "balance_written_around_ledger")
    with engine.begin() as conn:
        conn.execute(text("update reconciler.tasks set last_seen_run_id = :r where id = :t"),
                     {"r": r3, "t": tasks["t3"]})
    tasks["t5b"] = recorded_task(engine, r3, 5, "-250.00", "open", NOW - 2 * hour)
    tasks["t6"] = recorded_task(engine, r3, 6, "6.77", "open", NOW - 2 * hour)
    with engine.begin() as conn:
        conn.execute(text("""
            insert into reconciler.quality_results (run_id, suite, expectation, success, details)
            values (:r, 'ledger_entries', 'entry_kind_known', true, '{"observed": 0, "severity": "critical"}'),
                   (:r, 'balance_integrity', 'balance_matches_ledger', false,
                    '{"observed": 3, "severity": "warning", "description": "drift still stands"}')"""), {"r": r3})
    return History((r1, r2, r3), tasks)


def make_honest_customers(engine: Engine, customer_ids: range | list[int], amount: str = "50.00") -> None:
    """Many customers at once, each with one entry of ``amount`` and the matching cached balance."""
    money = Decimal(amount)
    with engine.begin() as conn:
        conn.execute(insert(customers), [{"id": i, "balance": money} for i in customer_ids])
        conn.execute(insert(ledger_entries), [{"customer_id": i, "amount": money, "kind": "payment",
                                               "balance_after": money} for i in customer_ids])


#: The routes around the core that the guard sees (and that incremental runs must follow).
def soften_ledger(engine: Engine) -> None:
    """Drop the append-only triggers: a ledger the company has not hardened yet."""
    with engine.begin() as conn:
        conn.execute(text("drop trigger if exists reconciler_append_only on customer_ledger_entries"))
        conn.execute(text("drop trigger if exists reconciler_append_only_truncate on customer_ledger_entries"))


BYPASS_ROUTES = ("balance", "insert", "amend", "delete", "copy")


def write_around_core(engine: Engine, route: str, customer_id: int, amount: str | Decimal = "5.00", *,
                      application_name: str = "legacy-billing") -> None:
    """One write around the balance core that leaves the customer drifting by ``amount`` (or by its latest
    entry's amount for ``delete``): ``balance`` UPDATEs the cached balance, ``insert`` appends an entry
    without touching the balance, ``amend`` UPDATEs the latest entry's amount, ``delete`` DELETEs the latest
    entry (both need a ledger that is not hardened), ``copy`` COPYs an entry in."""
    money = Decimal(amount)
    with engine.begin() as conn:
        conn.execute(text("select set_config('application_name', :name, true)"), {"name": application_name})
        if route == "balance":
            conn.execute(text("update customers set balance = balance + :m where id = :c"),
                         {"m": money, "c": customer_id})
        elif route == "insert":
            conn.execute(text("""insert into customer_ledger_entries (customer_id, amount, kind)
                                 values (:c, :m, 'legacy')"""),
                         {"m": money, "c": customer_id})
        elif route == "amend":
            conn.execute(text("""update customer_ledger_entries set amount = amount + :m where id =
                                 (select max(id) from customer_ledger_entries where customer_id = :c)"""),
                         {"m": money, "c": customer_id})
        elif route == "delete":
            conn.execute(text("""delete from customer_ledger_entries where id =
                                 (select max(id) from customer_ledger_entries where customer_id = :c)"""),
                         {"c": customer_id})
        elif route == "copy":
            raw = conn.connection.driver_connection
            assert raw is not None
            with raw.cursor() as cursor, cursor.copy(
                    "copy customer_ledger_entries (customer_id, amount, kind) from stdin") as copy:
                copy.write_row((customer_id, money, "legacy"))
        else:
            raise ValueError(f"unknown route {route!r}; one of {', '.join(BYPASS_ROUTES)}")


def make_monthly_ledger(engine: Engine, customer_ids: range, months: int = 12, amount: str = "10.00") -> None:
    """Customers with one entry per month of 2026 (created_at on the 15th, so a monthly partitioned ledger
    spreads them over ``months`` partitions), a balance_after chain and the matching cached balance."""
    money = Decimal(amount)
    with engine.begin() as conn:
        conn.execute(insert(customers), [{"id": i, "balance": money * months} for i in customer_ids])
        conn.execute(text("""
            insert into customer_ledger_entries (customer_id, amount, kind, balance_after, created_at)
            select c, :m, 'payment', :m * k, make_timestamptz(2026, k, 15, 12, 0, 0, 'UTC')
            from unnest(cast(:ids as bigint[])) as c, generate_series(1, :months) as k
            order by k, c"""), {"m": money, "ids": list(customer_ids), "months": months})
