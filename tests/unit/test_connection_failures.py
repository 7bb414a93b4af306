"""Only a lost server counts as 'database unavailable'; statement failures on a live connection do not."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from reconciler.db_errors import is_connection_failure


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
