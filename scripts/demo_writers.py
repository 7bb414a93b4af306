"""Two fake services writing around the balance core, as a company's legacy code does: plain psycopg, each
with its own ``application_name``, no ``reconciler`` import on the write path. The guard records them.

- ``legacy-billing`` applies late fees by updating ``customers.balance`` directly: for most customers without
  a ledger entry (drift), for one it also appends the entry with a correct ``balance_after`` (recorded, but it
  breaks nothing);
- ``support-tool`` posts goodwill credits as ledger entries and forgets the balance (drift the other way).

Customers are the first ones demo seed did not plant drift in, so the planted stories stay as they were.
Prints one line per service: its writes and the money it moved around the ledger.
"""

from __future__ import annotations

import sys
from decimal import Decimal

import psycopg

from reconciler.db import make_engine

LATE_FEE = Decimal("7.50")
GOODWILL = Decimal("15.00")


def main() -> int:
    engine = make_engine()
    dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    engine.dispose()
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = [int(r[0]) for r in conn.execute(
            "select c.id from customers c where not exists (select 1 from reconciler.demo_plants p "
            "where p.customer_id = c.id) and not exists (select 1 from reconciler.tasks t "
            "where t.customer_id = c.id and t.status in ('open', 'needs_review')) order by c.id limit 8")]
    if len(ids) < 8:
        print("demo_writers: fewer than 8 clean customers; seed the demo first", file=sys.stderr)
        return 1
    billing, support = ids[:5], ids[5:]

    with psycopg.connect(dsn, application_name="legacy-billing") as conn:
        for customer_id in billing[:4]:  # each its own transaction, as the legacy job commits per customer
            conn.execute("update customers set balance = balance - %s, updated_at = now() where id = %s",
                         (LATE_FEE, customer_id))
            conn.commit()
        with conn.transaction():  # the one path that keeps the chain: balance and entry together
            after = conn.execute("update customers set balance = balance - %s where id = %s returning balance",
                                 (LATE_FEE, billing[4])).fetchone()
            assert after is not None
            conn.execute("insert into customer_ledger_entries (customer_id, amount, kind, reference, balance_after) "
                         "values (%s, %s, 'fee', 'legacy-billing late fee', %s)", (billing[4], -LATE_FEE, after[0]))
    print(f"  legacy-billing: 6 writes around the core (late fees of {LATE_FEE} on customers "
          f"{', '.join(map(str, billing))}; the last one with its ledger entry)")

    with psycopg.connect(dsn, application_name="support-tool", autocommit=True) as conn:
        for customer_id in support:
            conn.execute("insert into customer_ledger_entries (customer_id, amount, kind, reference) "
                         "values (%s, %s, 'adjustment', 'support-tool goodwill')", (customer_id, GOODWILL))
    print(f"  support-tool: {len(support)} ledger entries of {GOODWILL} without a balance change (customers "
          f"{', '.join(map(str, support))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
