"""The manager: :class:`BalanceManager`, the one approved way to read and write balances.

It runs the statements of :mod:`.statements` under the rules of :mod:`.rules`, one transaction per change,
retrying serialization failures and deadlocks a bounded number of times (classified in
:mod:`reconciler.db_errors`). A chain mismatch opens the customer's realtime task through the task
lifecycle (:func:`reconciler.tasks.open_realtime_task`) inside the change's own transaction.

One statement in autocommit (the fast path, an uncached read) runs through :mod:`.autocommit`, which keeps
the manager's connections between calls. Still longer than ~500 lines on purpose: it is one class whose three
write paths (fast, locked, transfer) and their shared retry/transaction helpers must be read together to see
that each change is one transaction.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, TypeVar, overload

import psycopg
from sqlalchemy import Connection, Engine, TextClause
from sqlalchemy.exc import DBAPIError

from reconciler import tasks as task_lifecycle
from reconciler.db import describe_url
from reconciler.db_errors import (
    is_connection_failure,
    is_lock_not_available,
    is_numeric_overflow,
    is_retryable,
    is_unique_violation,
)
from reconciler.errors import CustomerBusyError, DatabaseUnavailableError, InvalidOperationError, TransientDatabaseError
from reconciler.money import DEFAULT_TOLERANCE, MAX_AMOUNT, is_drift, to_positive_money, to_tolerance
from reconciler.row_locks import describe_lockers, row_lockers

from .autocommit import HeldConnections, execute_pinned
from .cache import BalanceCache
from .rules import (
    _insufficient,
    _json,
    _not_found,
    _replayed_change,
    _replayed_reconciliation,
    _replayed_transfer,
    chain_drift,
    check_customer_id,
    check_key,
    check_kind,
    check_policy,
    check_reference,
    check_result_balance,
    plan_reconciliation,
    shortfall,
    signed_amount,
    transfer_entry_keys,
)
from .statements import (
    _APPLY_TRANSFER,
    _FAST_CHANGE,
    _KEYED_ENTRIES,
    _LEDGER_TOTALS,
    _LOAD_RECONCILIATION,
    _LOCK_FOR_CHANGE,
    _LOCK_FOR_RECONCILIATION,
    _LOCK_FOR_RECONCILIATION_NOWAIT,
    _LOCK_PAIR,
    _LOCKED_CHANGE,
    _READ_BALANCE,
    _SETTLE,
    _VALIDATE,
    _FastRow,
    _link,
)
from .values import (
    ADJUSTMENT_KIND,
    DEFAULT_CACHE_MAX_ENTRIES,
    DEFAULT_MAX_RETRIES,
    MAX_KEY_LENGTH,
    REALTIME_CAUSE,
    RETRY_BACKOFF_BASE,
    RETRY_BACKOFF_CAP,
    BalanceChange,
    BalanceCheck,
    ChainLink,
    KeyedEntry,
    Reconciliation,
    Transfer,
)

log = logging.getLogger("reconciler.balances")
#: Who a correction's audit row names when the caller's ``audit`` gives no ``by``.
CORRECTED_BY = "balance core"

T = TypeVar("T")


class _KeyTaken(Exception):
    """Internal: the idempotency key already belongs to an entry; carries the keyed entries."""


class BalanceManager:
    """The one approved way to read and write balances (the company's ``CustomerBalanceManager``).

    ``cache_ttl`` (seconds) turns on a read cache for :meth:`get_balance`. Every write through THIS
    manager invalidates the customer's cached balance as soon as it commits. Writers elsewhere (another
    process, another manager, SQL around the core) are not seen until the entry expires: a cached balance
    is at most ``cache_ttl`` seconds stale. Leave it ``None`` where a read must be exact (e.g. before a
    decision that is not re-checked under the row lock; the write methods never use the cache).

    ``allow_negative`` is the default for debits and transfers; each call may override it.
    ``max_retries`` bounds the retries of one operation on serialization failures and deadlocks.
    ``clock`` is the cache's monotonic clock (injectable for tests).

    The engine must use psycopg 3 (``reconciler.db.make_engine`` does). A payment costs one round trip, and
    so does an uncached ``get_balance`` (one primary-key read): ``make_engine`` checks a pooled connection's
    liveness without a round trip (:func:`reconciler.db.connection_is_alive`), and the statements are
    prepared on the server at their first use on a connection (see bench/README.md).
    """

    def __init__(self, engine: Engine, cache_ttl: float | None = None, *, allow_negative: bool = False,
                 max_retries: int = DEFAULT_MAX_RETRIES, clock: Callable[[], float] = time.monotonic,
                 cache_max_entries: int = DEFAULT_CACHE_MAX_ENTRIES) -> None:
        if cache_ttl is not None and (isinstance(cache_ttl, bool) or not cache_ttl > 0):
            raise InvalidOperationError(f"cache_ttl must be None (no cache) or seconds > 0, got {cache_ttl!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidOperationError(f"max_retries must be an int >= 0, got {max_retries!r}")
        self.engine = engine
        self.cache_ttl = cache_ttl
        self.allow_negative = bool(allow_negative)
        self.max_retries = max_retries
        self._cache = BalanceCache(cache_ttl, clock, cache_max_entries) if cache_ttl is not None else None
        if engine.dialect.driver != "psycopg":
            raise InvalidOperationError(
                f"the balance core needs the psycopg 3 driver (postgresql+psycopg://), got {engine.dialect.driver}; "
                f"build the engine with reconciler.db.make_engine")
        self._compiled: dict[TextClause, str] = {}
        self._pinned: Connection | None = None
        self._held = HeldConnections(engine)
        weakref.finalize(self, self._held.close)
        self._stats = {"retries": 0, "locked_path": 0}
        self._stats_lock = threading.Lock()

    # -- reads ------------------------------------------------------------------------------------

    @property
    def retries(self) -> int:
        """How many attempts this manager has retried after a serialization failure or deadlock."""
        return self.stats()["retries"]

    def stats(self) -> dict[str, int]:
        """Counters since construction: ``retries`` (40001/40P01 retried) and ``locked_path`` (changes
        that took the locked path: refused or unusual input, contention, or a chain mismatch)."""
        with self._stats_lock:
            return dict(self._stats)

    @contextmanager
    def pinned(self) -> Iterator[BalanceManager]:
        """This manager with ONE connection checked out for the whole block: every operation inside runs on
        it, with no pool checkout or pre-ping per call (in bench/README.md that is most of the distance to
        the raw baseline). Meant for a worker loop: use the yielded manager from one thread only. The cache
        and counters stay shared with this manager; the connection returns to the pool when the block
        ends, and the yielded manager then goes back to the pool per call."""
        if self._pinned is not None:
            yield self
            return
        with self.engine.connect() as conn:
            view = copy.copy(self)
            view._pinned = conn
            try:
                yield view
            finally:
                view._pinned = None

    def get_balance(self, customer_id: int) -> Decimal:
        """The stored balance (from the TTL cache when on: at most ``cache_ttl`` seconds stale for writes
        made outside this manager)."""
        customer_id = check_customer_id(customer_id)
        generation = 0
        if self._cache is not None:
            cached, generation = self._cache.get(customer_id)
            if cached is not None:
                return cached
        # ONE primary-key read in autocommit on the pooled psycopg connection: no BEGIN, no ROLLBACK on return.
        row = self._execute_autocommit(_READ_BALANCE, {"customer_id": customer_id}, one=False)
        if row is None:
            raise _not_found(customer_id)
        balance = row[0]
        if self._cache is not None:
            self._cache.put(customer_id, balance, generation)
        return Decimal(balance)

    def validate_balance(self, customer_id: int, *, tolerance: Decimal = DEFAULT_TOLERANCE) -> BalanceCheck:
        """Compare the stored balance with the ledger sum (one statement, one snapshot; no lock, no write)."""
        customer_id = check_customer_id(customer_id)
        tolerance = to_tolerance(tolerance)
        with self._reading() as conn:
            row = conn.execute(_VALIDATE, {"customer_id": customer_id}).one_or_none()
        if row is None:
            raise _not_found(customer_id)
        drift = row.balance - row.ledger_sum
        return BalanceCheck(customer_id, row.balance, row.ledger_sum, drift, not is_drift(drift, tolerance),
                            int(row.entry_count), tolerance)

    # -- writes -----------------------------------------------------------------------------------

    def update_balance(self, customer_id: int, amount: Decimal | int | str, operation: str = "add", *, kind: str,
                       reference: str | None = None, idempotency_key: str | None = None,
                       allow_negative: bool | None = None) -> BalanceChange:
        """Add or subtract ``amount`` (> 0, exact cents) and append the entry, in one transaction.

        Raises a named error and writes nothing on bad input, an unknown customer, or a debit below zero
        when negative balances are not allowed. With ``idempotency_key`` a repeated call returns the
        first result (``replayed=True``)."""
        customer_id = check_customer_id(customer_id)
        signed = signed_amount(amount, operation)
        kind = check_kind(kind)
        reference = check_reference(reference)
        key = check_key(idempotency_key)
        allowed = self.allow_negative if allow_negative is None else bool(allow_negative)
        params = {"customer_id": customer_id, "amount": signed, "kind": kind, "reference": reference,
                  "idempotency_key": key, "allow_negative": allowed or signed > 0}

        def attempt() -> BalanceChange:
            try:
                row = _FastRow._make(self._execute_autocommit(_FAST_CHANGE, params))
            except DBAPIError as exc:
                if key is not None and is_unique_violation(exc):
                    keyed = self._load_keyed(key, None)
                    if keyed:
                        return _replayed_change(key, customer_id, signed, kind, keyed)
                if not is_numeric_overflow(exc):
                    raise
            else:
                if row.entry_id is not None:
                    return BalanceChange(customer_id, signed, row.balance_after - signed, row.balance_after,
                                         int(row.entry_id), key, False, kind)
                if row.key_entry_id is not None:
                    first = KeyedEntry(row.key_entry_id, row.key_customer_id, row.key_amount, row.key_kind,
                                        row.key_balance_after)
                    return _replayed_change(key, customer_id, signed, kind, [first])
            # Nothing was written: refused funds, unknown customer, an overflow, or a chain the snapshot could
            # not confirm. Take the row lock and decide with exact values.
            self._count("locked_path")
            try:
                with self._transaction() as conn:
                    return self._locked_change(conn, params, allowed)
            except _KeyTaken as taken:
                return _replayed_change(key, customer_id, signed, kind, taken.args[0])
            except DBAPIError as exc:
                if key is not None and is_unique_violation(exc):
                    keyed = self._load_keyed(key, None)
                    if keyed:
                        return _replayed_change(key, customer_id, signed, kind, keyed)
                raise

        try:
            return self._retrying(attempt)
        finally:  # also when the outcome is unknown (e.g. the connection broke around a commit)
            self._invalidate(customer_id)

    def transfer(self, from_id: int, to_id: int, amount: Decimal | int | str, *, kind: str = "transfer",
                 reference: str | None = None, idempotency_key: str | None = None,
                 allow_negative: bool | None = None) -> Transfer:
        """Move ``amount`` from one customer to another in one transaction: both rows locked in id order,
        two entries (``<kind>_out`` and ``<kind>_in``, keys ``<key>:out`` and ``<key>:in``)."""
        from_id = check_customer_id(from_id, name="from_id")
        to_id = check_customer_id(to_id, name="to_id")
        if from_id == to_id:
            raise InvalidOperationError(f"a transfer needs two different customers, got {from_id} twice")
        money = to_positive_money(amount)
        if not isinstance(kind, str):
            check_kind(kind)  # raises: a kind is text
        # A transfer of kind K writes K_out and K_in: both must be listed entry kinds.
        check_kind(f"{kind}_out")
        check_kind(f"{kind}_in")
        reference = check_reference(reference)
        key = check_key(idempotency_key)
        if key is not None and len(key) > MAX_KEY_LENGTH - 4:
            raise InvalidOperationError(f"a transfer's idempotency_key is at most {MAX_KEY_LENGTH - 4} characters")
        allowed = self.allow_negative if allow_negative is None else bool(allow_negative)
        key_out, key_in = transfer_entry_keys(key)
        kind_out, kind_in = f"{kind}_out", f"{kind}_in"

        def replay(keyed: list[KeyedEntry]) -> Transfer:
            return _replayed_transfer(key, from_id, to_id, money, (kind_out, kind_in), (key_out, key_in), keyed)

        def attempt() -> Transfer:
            try:
                with self._transaction() as conn:
                    return self._apply_transfer(conn, from_id, to_id, money, allowed, kind_out, kind_in,
                                                key_out, key_in, reference, key)
            except _KeyTaken as taken:
                return replay(taken.args[0])
            except DBAPIError as exc:
                if key is not None and is_unique_violation(exc):
                    keyed = self._load_keyed(key_out, key_in)
                    if keyed:
                        return replay(keyed)
                raise

        try:
            return self._retrying(attempt)
        finally:  # also when the outcome is unknown (e.g. the connection broke around a commit)
            self._invalidate(from_id, to_id)

    def reconcile_balance(self, customer_id: int, policy: str = "ledger", *, tolerance: Decimal = Decimal("0.00"),
                          idempotency_key: str | None = None, reference: str | None = None,
                          audit: Mapping[str, object] | None = None, nowait: bool = False) -> Reconciliation:
        """Settle the balance against the ledger under the row lock, re-reading everything in one transaction.

        With ``nowait`` a customer whose row another session holds locked is not waited for: the call raises
        :class:`CustomerBusyError` at once, naming the sessions holding the lock, and writes nothing.

        Policy ``ledger`` sets the balance to the ledger sum (no entry); ``balance`` posts a
        ``reconciliation_adjustment`` entry of amount = drift so the ledger sum becomes the balance. A drift
        within ``tolerance`` under the lock changes nothing (``changed=False``). Every call is logged with
        old and new values and ``audit`` in ``reconciler.balance_reconciliations``; with an
        ``idempotency_key`` a replay returns the first result and writes nothing."""
        customer_id = check_customer_id(customer_id)
        policy = check_policy(policy)
        tolerance = to_tolerance(tolerance)
        key = check_key(idempotency_key)
        reference = check_reference(reference)
        audit_json = _json(dict(audit or {}))
        actor = str((audit or {}).get("by") or CORRECTED_BY)

        def attempt() -> Reconciliation:
            try:
                with self._transaction() as conn:
                    return self._settle(conn, customer_id, policy, tolerance, key, reference, audit_json, actor,
                                        nowait)
            except DBAPIError as exc:
                if nowait and is_lock_not_available(exc):
                    raise self._busy(customer_id) from exc
                if key is not None and is_unique_violation(exc):
                    with self._reading() as conn:
                        row = conn.execute(_LOAD_RECONCILIATION, {"idempotency_key": key}).one_or_none()
                    if row is not None:
                        return _replayed_reconciliation(key, customer_id, policy, row)
                raise

        try:
            return self._retrying(attempt)
        finally:  # also when the outcome is unknown (e.g. the connection broke around a commit)
            self._invalidate(customer_id)

    # -- transaction bodies -------------------------------------------------------------------------

    def _locked_change(self, conn: Connection, params: dict[str, Any], allowed: bool) -> BalanceChange:
        customer_id: int = params["customer_id"]
        signed: Decimal = params["amount"]
        locked = conn.execute(_LOCK_FOR_CHANGE, params).one_or_none()
        if locked is None:
            raise _not_found(customer_id)
        if locked.key_entry_id is not None:
            raise _KeyTaken(self._keyed_in(conn, params["idempotency_key"], None))
        before: Decimal = locked.balance
        missing = shortfall(before, signed, allowed)
        if missing is not None:
            raise _insufficient(customer_id, before, signed, missing)
        after = check_result_balance(customer_id, before, signed)
        row = conn.execute(_LOCKED_CHANGE, {**params, "balance_after": after}).one()
        link = _link(row)
        drift = chain_drift(before, link)
        if drift is not None:
            _open_realtime_task(conn, customer_id, before, drift, link, row.entry_id)
        return BalanceChange(customer_id, signed, before, after, int(row.entry_id), params["idempotency_key"],
                             False, params["kind"], drift)

    def _apply_transfer(self, conn: Connection, from_id: int, to_id: int, money: Decimal, allowed: bool,
                        kind_out: str, kind_in: str, key_out: str | None, key_in: str | None,
                        reference: str | None, key: str | None) -> Transfer:
        rows = conn.execute(_LOCK_PAIR, {"from_id": from_id, "to_id": to_id, "key_out": key_out,
                                         "key_in": key_in}).all()
        if any(row.key_hits for row in rows):
            raise _KeyTaken(self._keyed_in(conn, key_out, key_in))
        balances = {row.id: row.balance for row in rows}
        for customer_id in (from_id, to_id):
            if customer_id not in balances:
                raise _not_found(customer_id)
        missing = shortfall(balances[from_id], -money, allowed)
        if missing is not None:
            raise _insufficient(from_id, balances[from_id], -money, missing)
        from_after = check_result_balance(from_id, balances[from_id], -money)
        to_after = check_result_balance(to_id, balances[to_id], money)
        sides = conn.execute(_APPLY_TRANSFER, {
            "from_id": from_id, "to_id": to_id, "out_amount": -money, "in_amount": money,
            "kind_out": kind_out, "kind_in": kind_in, "key_out": key_out, "key_in": key_in,
            "from_after": from_after, "to_after": to_after, "reference": reference,
        }).all()
        if any(row.key_hits for row in sides):
            raise _KeyTaken(self._keyed_in(conn, key_out, key_in))
        changes: dict[int, BalanceChange] = {}
        for row in sides:
            outgoing = row.customer_id == from_id
            signed = -money if outgoing else money
            after = from_after if outgoing else to_after
            before = after - signed
            # This statement started after both locks were taken, so its snapshot is current.
            link = _link(row)
            drift = chain_drift(before, link)
            if drift is not None:
                _open_realtime_task(conn, row.customer_id, before, drift, link, row.entry_id)
            changes[row.customer_id] = BalanceChange(
                row.customer_id, signed, before, after, int(row.entry_id), key_out if outgoing else key_in,
                False, kind_out if outgoing else kind_in, drift)
        return Transfer(from_id, to_id, money, changes[from_id], changes[to_id], key, False)

    def _settle(self, conn: Connection, customer_id: int, policy: str, tolerance: Decimal, key: str | None,
                reference: str | None, audit_json: str, actor: str, nowait: bool = False) -> Reconciliation:
        lock = _LOCK_FOR_RECONCILIATION_NOWAIT if nowait else _LOCK_FOR_RECONCILIATION
        locked = conn.execute(lock, {"customer_id": customer_id, "idempotency_key": key}).one_or_none()
        if locked is None:
            raise _not_found(customer_id)
        if locked.key_id is not None:
            return _replayed_reconciliation(key, customer_id, policy, locked)
        # A fresh statement: its snapshot sees every entry committed before the lock was granted.
        totals = conn.execute(_LEDGER_TOTALS, {"customer_id": customer_id}).one()
        stored: Decimal = locked.balance
        ledger_sum = Decimal(totals.ledger_sum)
        plan = plan_reconciliation(stored, ledger_sum, policy, tolerance)
        settled = conn.execute(_SETTLE, {
            "customer_id": customer_id, "policy": policy, "idempotency_key": key, "reference": reference,
            "stored_before": stored, "ledger_sum": ledger_sum, "drift": plan.drift,
            "balance_after": plan.balance_after, "set_balance": plan.changed and policy == "ledger",
            "adjustment": plan.adjustment, "kind": ADJUSTMENT_KIND, "last_entry_id": totals.last_entry_id,
            "changed": plan.changed, "audit": audit_json, "actor": actor,
            # The audit row of the correction (old and new values, policy, who; the database adds when).
            "audit_event": json.dumps({
                "customer_id": customer_id, "policy": policy, "old_balance": str(stored),
                "new_balance": str(plan.balance_after), "ledger_sum": str(ledger_sum), "drift": str(plan.drift),
                "idempotency_key": key, "reference": reference, "audit": json.loads(audit_json)}),
        }).one()
        if plan.changed:
            log.info("reconciled customer %s (policy %s): balance %s -> %s, drift was %s",
                     customer_id, policy, stored, plan.balance_after, plan.drift)
        return Reconciliation(customer_id, policy, stored, ledger_sum, plan.drift, plan.balance_after,
                              settled.entry_id, plan.changed, False, int(settled.reconciliation_id))

    # -- helpers ------------------------------------------------------------------------------------

    @overload
    def _execute_autocommit(self, statement: TextClause, params: Mapping[str, Any]) -> tuple[Any, ...]: ...

    @overload
    def _execute_autocommit(self, statement: TextClause, params: Mapping[str, Any], *,
                            one: bool) -> tuple[Any, ...] | None: ...

    def _execute_autocommit(self, statement: TextClause, params: Mapping[str, Any], *,
                            one: bool = True) -> tuple[Any, ...] | None:
        """Run one statement as its own transaction and return its single row (with ``one=False``: its first
        row, or None).

        This is the hot path, measured: SQLAlchemy's execution layer plus BEGIN and COMMIT cost about as
        much client CPU as the database work itself, so the statement (a Core ``text()`` construct, bound
        parameters only, compiled once for this engine's dialect) runs on the psycopg connection itself in
        autocommit mode: one round trip, with a cursor kept per connection and the statement prepared on the
        server at its first use there (``prepare=True``: later calls send only the parameters). The connection
        is the pinned one (see :meth:`pinned`) or one this manager keeps in autocommit between calls
        (:class:`.autocommit.HeldConnections`; its liveness checked without a round trip,
        :func:`reconciler.db.connection_is_alive`). Driver errors are
        wrapped in SQLAlchemy's DBAPIError like any other statement's, and a broken connection is
        invalidated rather than reused."""
        sql = self._compiled.get(statement)
        if sql is None:
            sql = self._compiled[statement] = str(statement.compile(dialect=self.engine.dialect))
        if self._pinned is None:
            return self._held.execute(sql, params, one)
        return execute_pinned(self._pinned, sql, params, one, self.engine.dialect)

    def close(self) -> None:
        """Return the connections this manager keeps between calls to the engine's pool (they are also returned
        when the manager is garbage-collected). The manager stays usable."""
        self._held.close()

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One transaction: on the pinned connection, or on one from the pool (``engine.begin()``)."""
        if self._pinned is None:
            with self.engine.begin() as conn:
                yield conn
        else:
            with self._pinned.begin():
                yield self._pinned

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A connection for reads; on the pinned one inside a short transaction, so none stays open."""
        if self._pinned is None:
            with self.engine.connect() as conn:
                yield conn
        else:
            with self._pinned.begin():
                yield self._pinned

    def _busy(self, customer_id: int) -> CustomerBusyError:
        """The error for a customer locked by another session, naming the sessions holding the lock."""
        try:
            with self._reading() as conn:
                lockers = row_lockers(conn, customer_id)
        except DBAPIError:  # diagnostics only: never turn "busy" into a failure
            log.warning("could not look up who holds customer %s's row lock", customer_id, exc_info=True)
            lockers = []
        return CustomerBusyError(
            f"customer {customer_id} is locked by another session ({describe_lockers(lockers)}); nothing was "
            f"written: the correction is skipped now and retried by the next run", customer_id, tuple(lockers))

    def _count(self, name: str) -> None:
        with self._stats_lock:
            self._stats[name] += 1

    def _retrying(self, attempt: Callable[[], T]) -> T:
        last: DBAPIError | None = None
        for number in range(self.max_retries + 1):
            try:
                return attempt()
            except psycopg.OperationalError as exc:  # the pool connecting anew raises raw driver errors
                if not is_connection_failure(exc):
                    raise
                raise _unavailable(self.engine, exc) from exc
            except DBAPIError as exc:
                if exc.connection_invalidated or is_connection_failure(exc.orig):
                    raise _unavailable(self.engine, exc.orig or exc) from exc
                if not is_retryable(exc):
                    raise
                last = exc
                self._count("retries")
                log.info("retrying after %s (attempt %d of %d)", type(exc.orig).__name__, number + 1,
                         self.max_retries + 1)
                if number < self.max_retries:
                    time.sleep(random.uniform(0, min(RETRY_BACKOFF_CAP, RETRY_BACKOFF_BASE * 2**number)))
        assert last is not None
        reason = str(last.orig).strip().splitlines()[0] if last.orig else type(last).__name__
        raise TransientDatabaseError(
            f"gave up after {self.max_retries + 1} attempts, each ended by {type(last.orig).__name__} ({reason}); "
            f"nothing was written: retry later (with the same idempotency key), or reduce contention on these "
            f"customers") from last

    def _keyed_in(self, conn: Connection, key_a: str | None, key_b: str | None) -> list[KeyedEntry]:
        rows = conn.execute(_KEYED_ENTRIES, {"key_a": key_a, "key_b": key_b}).all()
        return [KeyedEntry(r.id, r.customer_id, r.amount, r.kind, r.balance_after) for r in rows]

    def _load_keyed(self, key_a: str | None, key_b: str | None) -> list[KeyedEntry]:
        with self._reading() as conn:
            return self._keyed_in(conn, key_a, key_b)

    def _invalidate(self, *customer_ids: int) -> None:
        if self._cache is not None:
            self._cache.invalidate(*customer_ids)


def _open_realtime_task(conn: Connection, customer_id: int, before: Decimal, drift: Decimal, link: ChainLink,
                        entry_id: int) -> None:
    expected = before - drift
    evidence = {
        "check": "realtime",
        "detected_by_entry_id": entry_id,
        "previous_entry_id": link.previous_entry_id,
        "previous_balance_after": link.previous_balance_after,
        "anchored": link.anchor_balance is not None and link.anchor_entry_id == link.previous_entry_id,
        "balance_before": before,
        "expected_balance_before": expected,
        "ledger_sum_is": "the chain's balance before the change (previous balance_after or anchor), not a SUM",
    }
    if abs(drift) > MAX_AMOUNT or abs(expected) > MAX_AMOUNT:  # cannot be stored; never block the payment
        log.error("realtime drift on customer %s too large to record as a task: %s", customer_id, drift)
        return
    # The task lifecycle owns reconciler.tasks: it opens the task with its opening event, in THIS transaction.
    opened = task_lifecycle.open_realtime_task(conn, customer_id, stored_balance=before, ledger_sum=expected,
                                               drift=drift, cause=REALTIME_CAUSE, evidence=evidence)
    log.warning("customer %s: balance before entry %s is %s but the chain says %s (drift %s); %s",
                customer_id, entry_id, before, expected, drift,
                f"opened realtime task {opened}" if opened is not None else "an unresolved task already exists")


def _unavailable(engine: Engine, exc: BaseException) -> DatabaseUnavailableError:
    """The database went away during a change: its outcome is unknown when the statement had been sent, so the
    message says how to make the retry exactly-once."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DatabaseUnavailableError(
        f"lost the ledger database ({describe_url(engine.url)}): {reason}. If the change was sent it may have been "
        f"applied: retry it with the same idempotency_key once the database is back, so it applies exactly once")

