"""Factories that read like a small ledger. They write rows directly, around the balance core, on
purpose: that is how tests plant the drift the product must find."""

from __future__ import annotations

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


def make_honest_customers(engine: Engine, customer_ids: range | list[int], amount: str = "50.00") -> None:
    """Many customers at once, each with one entry of ``amount`` and the matching cached balance."""
    money = Decimal(amount)
    with engine.begin() as conn:
        conn.execute(insert(customers), [{"id": i, "balance": money} for i in customer_ids])
        conn.execute(insert(ledger_entries), [{"customer_id": i, "amount": money, "kind": "payment",
                                               "balance_after": money} for i in customer_ids])


#: The routes around the core that the guard sees (and that incremental runs must follow).
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
                copy.write_row((customer_id, money, "legacy-import"))
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
