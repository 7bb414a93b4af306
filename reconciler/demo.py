"""Demo data, loaded: the seed's I/O. :mod:`reconciler.demo_generator` makes the rows (what is planted, and
the reproducibility contract) and :mod:`reconciler.demo_copy` encodes them for binary COPY; this module
writes them. The names of both are re-exported here, where the CLI, the tests and the bench find them.

Seeding refuses a ledger that has any customer or entry, unless ``reset`` is given AND the data was
created by demo seed (plants recorded, or the first entry carries the demo reference). The reset
truncates the ledger and the reconciler's run tables in the SAME transaction as the new data, with the
append-only triggers disabled only inside it. Rows are sent with binary COPY built by numpy (a thread
generates the next batch while the database ingests the current one); the entries table's indexes and
foreign keys are dropped for the load and rebuilt, exactly as they were, before the same transaction
commits (pg_restore's way: about 3x faster than maintaining them row by row). Then the tables are
vacuumed and analysed so index-only scans and the planner see the new data.

It is the one writer, besides the balance core, allowed to replace the ledger and the run tables wholesale
(TRUNCATE + COPY), and only for data that demo seeding created.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, select, text

from reconciler.demo_copy import (
    COPY_SIGNATURE,
    COPY_TRAILER,
    EncodedBatch,
    encode_customers,
    encode_entries,
    generate,
    reference,
)
from reconciler.demo_generator import (
    AROUND,
    BASE_TIME,
    BATCH_CUSTOMERS,
    DEFAULT_CUSTOMERS,
    DEFAULT_DRIFT_RATE,
    DEFAULT_ENTRIES_PER_CUSTOMER,
    DEFAULT_SEED,
    DUPLICATED,
    LARGE_SHARE_PERCENT,
    MISSING,
    PLANT_KINDS,
    REFERENCE_PREFIX,
    SIGN_FLIPPED,
    UNAPPLIED,
    Batch,
    Plant,
    SeedOptions,
    batch_count,
    feasible_kinds,
    generate_batch,
    honest_amounts,
    plant_customer,
)
from reconciler.errors import DemoDataError
from reconciler.schema import demo_plants

__all__ = [
    "AROUND", "BASE_TIME", "BATCH_CUSTOMERS", "CUSTOMER_COPY", "DEFAULT_CUSTOMERS", "DEFAULT_DRIFT_RATE",
    "DEFAULT_ENTRIES_PER_CUSTOMER", "DEFAULT_SEED", "DUPLICATED", "ENTRY_COPY", "LARGE_SHARE_PERCENT", "MISSING",
    "PLANT_KINDS", "REFERENCE_PREFIX", "SIGN_FLIPPED", "UNAPPLIED", "Batch", "EncodedBatch", "Plant", "SeedOptions",
    "SeedResult", "batch_count", "encode_customers", "encode_entries", "feasible_kinds", "first_planted_customer",
    "generate", "generate_batch", "honest_amounts", "list_plants", "plant_customer", "reference", "seed",
    "vacuum_analyze",
]

#: The encoded rows' columns, in the order :mod:`reconciler.demo_copy` writes them.
CUSTOMER_COPY = "COPY customers (id, balance, updated_at) FROM STDIN (FORMAT BINARY)"
ENTRY_COPY = ("COPY customer_ledger_entries (id, customer_id, amount, kind, reference, balance_after, created_at)"
              " FROM STDIN (FORMAT BINARY)")

APPEND_ONLY_TRIGGERS = ("reconciler_append_only", "reconciler_append_only_truncate")
RECONCILER_RUN_TABLES = ("reconciler.findings", "reconciler.run_chunks", "reconciler.quality_results",
                         "reconciler.tasks", "reconciler.runs", "reconciler.demo_plants",
                         "reconciler.bypass_writes")


@dataclass(frozen=True)
class SeedResult:
    """What a seed wrote and how long it took."""

    customers: int
    entries: int
    plants: Counter[str]
    seed: int
    seconds: float
    reset: bool

    def to_json(self) -> dict[str, object]:
        return {"customers": self.customers, "entries": self.entries, "plants": dict(sorted(self.plants.items())),
                "planted": sum(self.plants.values()), "seed": self.seed, "seconds": round(self.seconds, 3),
                "reset": self.reset}





def ledger_counts(conn: Connection) -> tuple[bool, bool]:
    """(customers has rows, entries has rows), cheaply."""
    row = conn.execute(text("select exists (select 1 from customers), "
                            "exists (select 1 from customer_ledger_entries)")).one()
    return bool(row[0]), bool(row[1])


def is_demo_ledger(conn: Connection) -> bool:
    """True when the ledger was created by demo seed: plants are recorded, or the first entry carries
    the demo reference (a seed only ever starts on an empty ledger)."""
    if conn.execute(select(demo_plants.c.customer_id).limit(1)).first() is not None:
        return True
    first = conn.execute(text("select reference from customer_ledger_entries order by id limit 1")).first()
    return first is not None and isinstance(first[0], str) and first[0].startswith(REFERENCE_PREFIX)


def _existing_triggers(conn: Connection) -> list[str]:
    rows = conn.execute(text("""select tgname from pg_trigger
                                where tgrelid = 'customer_ledger_entries'::regclass and tgname = any(:names)"""),
                        {"names": list(APPEND_ONLY_TRIGGERS)})
    return sorted(str(r[0]) for r in rows)


def reset_demo_data(conn: Connection) -> None:
    """Empty the demo ledger and the reconciler's run tables inside the caller's transaction.

    The append-only triggers are disabled only around the TRUNCATE and enabled again before this
    returns, in the same transaction: nothing outside it ever sees them off.
    """
    if not is_demo_ledger(conn):
        raise DemoDataError(
            "refusing to reset: the ledger has data that demo seed did not create (no demo plants recorded and "
            f"the first entry's reference does not start with {REFERENCE_PREFIX!r}); use a new database "
            "(RECONCILER_DATABASE_URL or RECONCILER_HOME) for demo data")
    triggers = _existing_triggers(conn)
    for name in triggers:
        conn.execute(text(f'alter table customer_ledger_entries disable trigger "{name}"'))
    conn.execute(text(f"truncate {', '.join(RECONCILER_RUN_TABLES)}, customer_ledger_entries, customers "
                      "restart identity cascade"))
    for name in triggers:
        conn.execute(text(f'alter table customer_ledger_entries enable trigger "{name}"'))


def _copy(conn: Connection, statement: str, payload: bytes) -> None:
    dbapi = conn.connection.driver_connection
    assert dbapi is not None
    with dbapi.cursor() as cursor, cursor.copy(statement) as copy:
        copy.write(COPY_SIGNATURE)
        copy.write(payload)
        copy.write(COPY_TRAILER)


def _produce(options: SeedOptions, out: queue.Queue[Any], stop: threading.Event) -> None:
    try:
        for item in generate(options):
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        out.put(None)
    except BaseException as exc:  # handed to the consumer, which raises it
        out.put(exc)


def _batches_in_background(options: SeedOptions) -> Iterator[EncodedBatch]:
    """Generate the next batch on a thread while the database ingests the current one (2 cores)."""
    items: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()
    worker = threading.Thread(target=_produce, args=(options, items, stop), name="demo-generate", daemon=True)
    worker.start()
    try:
        while (item := items.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


_ENTRY_TABLE = "customer_ledger_entries"
BULK_LOAD_MAINTENANCE_WORK_MEM = "256MB"


def _defer_entry_constraints(conn: Connection) -> list[str]:
    """Drop the entries table's foreign keys and indexes (inside the caller's transaction) and return the
    statements that restore them exactly, in order: primary/unique keys, other indexes, foreign keys.

    This is how pg_restore loads data: building an index once, sorted, after the rows are in is several
    times faster than maintaining it row by row, and re-adding the foreign key checks every row in one
    join. Only for an EMPTY entries table (demo seed checks that first); the restore runs in the same
    transaction, so no other session ever sees the table without them. A primary key that another table
    references is kept in place.
    """
    referenced = conn.execute(text("select exists (select 1 from pg_constraint where confrelid = "
                                   "cast(:t as regclass) and contype = 'f')"), {"t": _ENTRY_TABLE}).scalar()
    constraints = conn.execute(text("""
        select conname, contype, pg_get_constraintdef(oid) as definition, conindid
        from pg_constraint where conrelid = cast(:t as regclass) and contype in ('p', 'u', 'f')
        order by contype, conname"""), {"t": _ENTRY_TABLE}).all()
    keys = [c for c in constraints if c.contype in ("p", "u") and not referenced]
    foreign = [c for c in constraints if c.contype == "f"]
    kept_indexes = {c.conindid for c in constraints if c.contype in ("p", "u") and referenced}
    indexes = conn.execute(text("""
        select i.indexrelid, c.relname, pg_get_indexdef(i.indexrelid) as definition
        from pg_index i join pg_class c on c.oid = i.indexrelid
        where i.indrelid = cast(:t as regclass)
          and not exists (select 1 from pg_constraint k where k.conindid = i.indexrelid and k.conrelid = i.indrelid)
        order by c.relname"""), {"t": _ENTRY_TABLE}).all()
    restore = [f'alter table {_ENTRY_TABLE} add constraint "{c.conname}" {c.definition}' for c in keys]
    restore += [str(i.definition) for i in indexes if i.indexrelid not in kept_indexes]
    restore += [f'alter table {_ENTRY_TABLE} add constraint "{c.conname}" {c.definition}' for c in foreign]
    for c in foreign + keys:
        conn.execute(text(f'alter table {_ENTRY_TABLE} drop constraint "{c.conname}"'))
    for i in indexes:
        conn.execute(text(f'drop index "{i.relname}"'))
    return restore


def seed(engine: Engine, options: SeedOptions, progress: Callable[[int, int], None] | None = None) -> SeedResult:
    """Load the demo ledger described by ``options`` in one transaction, then vacuum and analyse it.

    ``progress(customers_done, customers_total)`` is called after each batch.
    """
    started = time.perf_counter()
    counts: Counter[str] = Counter({kind: 0 for kind in feasible_kinds(options.entries_per_customer)})
    entries = 0
    with engine.begin() as conn:
        conn.execute(text("lock table customer_ledger_entries in access exclusive mode"))
        conn.execute(text("lock table customers in share row exclusive mode"))
        has_customers, has_entries = ledger_counts(conn)
        reset = False
        if has_customers or has_entries:
            if not options.reset:
                raise DemoDataError(
                    "refusing to seed: the ledger already has "
                    f"{'customers' if has_customers else ''}{' and ' if has_customers and has_entries else ''}"
                    f"{'ledger entries' if has_entries else ''}; demo seed only writes into an empty ledger. "
                    "Pass --reset to replace earlier demo data, or point RECONCILER_DATABASE_URL at a new database")
            reset_demo_data(conn)
            reset = True
        restore = _defer_entry_constraints(conn)
        plants: list[Plant] = []
        for batch in _batches_in_background(options):
            _copy(conn, CUSTOMER_COPY, batch.customer_rows)
            if batch.entries:
                _copy(conn, ENTRY_COPY, batch.entry_rows)
            entries += batch.entries
            plants.extend(batch.plants)
            done = batch.last_customer
            del batch  # free the encoded rows before the next batch arrives
            if progress is not None:
                progress(done, options.customers)
        conn.execute(text(f"set local maintenance_work_mem = '{BULK_LOAD_MAINTENANCE_WORK_MEM}'"))
        for statement in restore:  # re-adding the foreign key checks every entry's customer
            conn.execute(text(statement))
        if plants:
            conn.execute(demo_plants.insert(), [
                {"customer_id": p.customer_id, "kind": p.kind, "drift": p.drift, "entry_id": p.entry_id,
                 "seed": p.seed} for p in plants])
        conn.execute(text("""select setval(pg_get_serial_sequence('customer_ledger_entries', 'id'),
                                           greatest((select max(id) from customer_ledger_entries), 1),
                                           (select count(*) > 0 from customer_ledger_entries))"""))
        counts.update(p.kind for p in plants)
    vacuum_analyze(engine)
    return SeedResult(customers=options.customers, entries=entries, plants=counts, seed=options.seed,
                      seconds=time.perf_counter() - started, reset=reset)


def vacuum_analyze(engine: Engine) -> None:
    """VACUUM (ANALYZE) the ledger tables: fresh statistics for the planner and a visibility map for
    index-only scans. VACUUM cannot run inside a transaction, hence autocommit."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("customers", "customer_ledger_entries", "reconciler.demo_plants"):
            conn.execute(text(f"vacuum (analyze) {table}"))


def list_plants(conn: Connection) -> list[Plant]:
    """Every recorded plant, by customer id."""
    rows = conn.execute(select(demo_plants).order_by(demo_plants.c.customer_id))
    return [Plant(int(r.customer_id), str(r.kind), Decimal(r.drift), None if r.entry_id is None else int(r.entry_id),
                  int(r.seed)) for r in rows]


def first_planted_customer(conn: Connection) -> int:
    """The smallest planted customer id; :class:`DemoDataError` when nothing is planted."""
    first = conn.execute(select(demo_plants.c.customer_id).order_by(demo_plants.c.customer_id).limit(1)).scalar()
    if first is None:
        raise DemoDataError("no planted customers recorded; run `reconciler demo seed --drift-rate 0.01` first")
    return int(first)
