"""Only a lost server counts as 'database unavailable'; statement failures on a live connection do not; a lost
database is reported in one line."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors
from sqlalchemy.exc import OperationalError

from reconciler.db import database_lost
from reconciler.db_errors import is_connection_failure, lost_database
from reconciler.errors import DatabaseLostError, DatabaseUnavailableError


@pytest.mark.parametrize("exc", [
    psycopg.OperationalError("connection refused"),  # no SQLSTATE: the connection never came up
    errors.ConnectionFailure("08006"),
    errors.AdminShutdown("terminating connection due to administrator command"),
])
def test_lost_server_is_a_connection_failure(exc: BaseException) -> None:
    """No SQLSTATE, class 08 and server shutdowns mean the database is gone."""
    assert is_connection_failure(exc)


@pytest.mark.parametrize("exc", [
    errors.SerializationFailure("40001"),
    errors.DeadlockDetected("40P01"),
    errors.LockNotAvailable("lock timeout"),
    errors.QueryCanceled("statement timeout"),
    errors.UniqueViolation("duplicate key"),
    ValueError("not a database error"),
    None,
])
def test_statement_failures_are_not_connection_failures(exc: BaseException | None) -> None:
    """Retryable conflicts, timeouts and constraint errors keep their own handling."""
    assert not is_connection_failure(exc)


def _wrapped(driver_error: Exception) -> OperationalError:
    """What SQLAlchemy raises: the driver's error wrapped, with the SQL and its 'Background on this error' link."""
    return OperationalError("select * from customers where id = %(id)s", {"id": 1}, driver_error)


def test_a_lost_database_is_one_line_naming_the_database_without_its_password() -> None:
    """database_lost: one line with what was lost, the URL with its password masked, the driver's reason, and
    that rerunning is safe; no SQL text, no SQLAlchemy link, even when wrapped in another error."""
    try:
        try:
            raise _wrapped(errors.AdminShutdown("terminating connection due to administrator command\nDETAIL: x"))
        except OperationalError as exc:
            raise RuntimeError("a step failed") from exc
    except RuntimeError as outer:
        lost = database_lost(outer, "postgresql://app:s3cret@db.example:5432/ledger", doing="comparing chunks")
    assert isinstance(lost, DatabaseLostError)
    message = str(lost)
    assert "\n" not in message and "s3cret" not in message and "sqlalche.me" not in message
    assert "select" not in message.lower()
    assert message.startswith("lost the ledger database (postgresql+psycopg://app:***@db.example:5432/ledger) "
                              "while comparing chunks: terminating connection due to administrator command.")
    assert "rerunning is safe" in message


def test_a_failed_statement_on_a_live_database_is_not_a_lost_database() -> None:
    """A serialization failure or a plain bug is not reported as a lost database."""
    assert database_lost(_wrapped(errors.SerializationFailure("40001")), "postgresql://x/y", doing="x") is None
    assert database_lost(ValueError("bug"), "postgresql://x/y", doing="x") is None
    assert lost_database(DatabaseUnavailableError("the core lost it")) is not None
