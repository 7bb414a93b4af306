"""Turn an orchestrator's connection URI into the ledger database URL the library uses.

Airflow (or any other scheduler) hands over a connection as a URI such as
``postgres://user:secret@db:5432/ledger?sslmode=require``; the library speaks SQLAlchemy on psycopg 3.
The conversion is pure (no lookup, no I/O, no airflow import): it keeps the parts libpq understands
and drops the orchestrator's own extras (``cursor``, ``iam``, ``__extra__``...), which libpq would refuse.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from reconciler.db import normalise_url
from reconciler.errors import InvalidOperationError

#: URI schemes that name a PostgreSQL connection (Airflow writes ``postgres``; users write ``postgresql``).
POSTGRES_SCHEMES = ("postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2")

#: Connection parameters libpq accepts in a URI query; anything else is an orchestrator extra.
LIBPQ_QUERY_KEYS = frozenset({
    "host", "hostaddr", "port", "dbname", "user", "passfile", "channel_binding", "connect_timeout",
    "client_encoding", "options", "application_name", "fallback_application_name", "keepalives",
    "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout", "replication",
    "gssencmode", "sslmode", "sslnegotiation", "sslcompression", "sslcert", "sslkey", "sslpassword",
    "sslcertmode", "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "requirepeer", "ssl_min_protocol_version",
    "ssl_max_protocol_version", "krbsrvname", "gsslib", "gssdelegation", "service", "target_session_attrs",
    "load_balance_hosts",
})


def libpq_query(query: Mapping[str, str | tuple[str, ...]]) -> dict[str, str | tuple[str, ...]]:
    """The part of a URI query that libpq understands (orchestrator extras dropped)."""
    return {key: value for key, value in query.items() if key in LIBPQ_QUERY_KEYS}


def database_url_from_uri(uri: str) -> URL:
    """The ledger database URL (``postgresql+psycopg``) for a connection ``uri``.

    Raises :class:`InvalidOperationError` when ``uri`` is not a PostgreSQL URI or names no database;
    the message never contains the password.
    """
    try:
        parsed = make_url(uri.strip())
    except ArgumentError:
        raise InvalidOperationError(
            "the ledger connection is not a URI (expected postgres://USER:PASSWORD@HOST:PORT/DATABASE); "
            "fix the connection `ledger_db` or RECONCILER_DATABASE_URL") from None
    if parsed.drivername not in POSTGRES_SCHEMES:
        raise InvalidOperationError(
            f"the ledger connection has type {parsed.drivername!r}, expected one of {', '.join(POSTGRES_SCHEMES)}; "
            "make `ledger_db` a Postgres connection")
    if not parsed.database:
        raise InvalidOperationError(
            f"the ledger connection {parsed.render_as_string(hide_password=True)} names no database "
            "(the Airflow field 'schema', the URI path); set it to the ledger database, e.g. /ledger")
    return normalise_url(parsed.set(query=libpq_query(parsed.query)))
