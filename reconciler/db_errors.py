"""SQLSTATE classification, in one place: which database errors are retried, which mean the server is gone.

Invariant: every module that decides on a database error asks here, so a retry rule, a deferral rule and
the "database went away" rule each have exactly one definition. psycopg maps each SQLSTATE to its own
exception class; SQLAlchemy wraps it in ``DBAPIError`` (``.orig``). Nothing here talks to a database.
"""

from __future__ import annotations

import psycopg
import psycopg.errors
from sqlalchemy.exc import DBAPIError

from reconciler.errors import DatabaseUnavailableError, TransientDatabaseError

#: SQLSTATEs of a lost server besides class 08 (connection exceptions): admin, crash and cannot-connect-now
#: shutdowns.
CONNECTION_FAILURE_STATES = ("57P01", "57P02", "57P03")


def _driver_error(exc: BaseException | None) -> BaseException | None:
    return exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc


def is_retryable(exc: BaseException) -> bool:
    """Serialization failures (40001) and deadlocks (40P01) may pass on a retry; nothing else is retried."""
    return isinstance(exc, DBAPIError) and isinstance(
        exc.orig, psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected)


def is_unique_violation(exc: BaseException) -> bool:
    """23505: a unique index refused the row (e.g. an idempotency key taken by a racing caller)."""
    return isinstance(exc, DBAPIError) and isinstance(exc.orig, psycopg.errors.UniqueViolation)


def is_lock_not_available(exc: BaseException) -> bool:
    """55P03: a row lock was not granted (NOWAIT, or ``lock_timeout`` expired)."""
    return isinstance(exc, DBAPIError) and isinstance(exc.orig, psycopg.errors.LockNotAvailable)


def is_numeric_overflow(exc: BaseException) -> bool:
    """22003: a value beyond its numeric type (e.g. a balance beyond numeric(18,2))."""
    return isinstance(exc, DBAPIError) and isinstance(exc.orig, psycopg.errors.NumericValueOutOfRange)


def is_connection_failure(exc: BaseException | None) -> bool:
    """True when ``exc`` (a psycopg error, or SQLAlchemy's wrapper of one) says the server is gone (no
    SQLSTATE at all, class 08, or a shutdown), not when a statement failed on a live connection
    (serialization failures, lock timeouts and the like)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    cause = _driver_error(exc)
    if not isinstance(cause, psycopg.OperationalError):
        return False
    state = cause.sqlstate
    return state is None or state.startswith("08") or state in CONNECTION_FAILURE_STATES


def is_transient(exc: BaseException) -> bool:
    """True for failures that leave nothing written and may pass on a retry: lock or statement timeouts
    (55P03, 57014), serialization failures and deadlocks (after the core's own retries)."""
    if isinstance(exc, TransientDatabaseError):
        return True
    return isinstance(_driver_error(exc), psycopg.errors.LockNotAvailable | psycopg.errors.QueryCanceled
                      | psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected)


def lost_database(exc: BaseException) -> BaseException | None:
    """The error in ``exc``'s chain (itself, its causes, its contexts) that says the database went away, or
    None. A step may wrap the lost connection in its own error (the core raises
    :class:`DatabaseUnavailableError` from it): the driver's own error is preferred, as it names the cause."""
    seen: set[int] = set()
    found: BaseException | None = None
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if is_connection_failure(current):
            return current
        if found is None and isinstance(current, DatabaseUnavailableError):
            found = current
        current = current.__cause__ or current.__context__
    return found


def first_line(exc: BaseException) -> str:
    """The database's own one-line message of ``exc`` (no SQL text, no SQLAlchemy background link)."""
    cause = _driver_error(exc) or exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__
