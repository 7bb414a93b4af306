"""Alerts: which outcomes alert and what they say; channels from connection fields; connection URIs."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from reconciler.alerts import (
    DEFAULT_MAX_AGE,
    Alert,
    ReviewOutcome,
    alert_for_failure,
    alert_for_staleness,
    alert_for_summary,
    parse_drift_threshold,
)
from reconciler.connections import database_url_from_uri
from reconciler.errors import InvalidAmountError, InvalidOperationError

NOW = dt.datetime(2026, 11, 26, 3, 0, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Outcome:
    run_id: int = 7
    status: str = "succeeded"
    customers_checked: int = 20_000
    drift_count: int = 3
    corrected: int = 2
    needs_review: int = 1
    open: int = 0
    total_abs_drift: Decimal = Decimal("250.00")
    halted_reason: str | None = None
    report_path: str | None = "/srv/reports/run-7"
    error: str | None = None
    busy: list[dict[str, Any]] = field(default_factory=list)


def test_clean_run_below_threshold_does_not_alert() -> None:
    """A succeeded run whose drift is within the threshold produces no alert."""
    assert alert_for_summary(Outcome(), drift_above=Decimal("1000.00")) is None


def test_drift_exactly_at_threshold_does_not_alert_but_one_cent_more_does() -> None:
    """The drift alert is strictly above the threshold, like drift itself is strictly above tolerance."""
    assert alert_for_summary(Outcome(total_abs_drift=Decimal("1000.00")), drift_above=Decimal("1000.00")) is None
    alert = alert_for_summary(Outcome(total_abs_drift=Decimal("1000.01")), drift_above=Decimal("1000.00"))
    assert alert is not None and alert.kind == "drift" and alert.run_id == 7
    assert "1,000.01" in alert.subject and "1,000.00" in alert.subject
    assert alert.details["total_abs_drift"] == "1000.01"


def test_no_threshold_disables_the_drift_alert_only() -> None:
    """drift_above=None never alerts on drift, but a halted run still alerts."""
    assert alert_for_summary(Outcome(total_abs_drift=Decimal("99999.00")), drift_above=None) is None
    assert alert_for_summary(Outcome(status="halted", halted_reason="too many"), drift_above=None) is not None


def test_halted_run_alerts_with_reason_counts_and_next_step() -> None:
    """A halted run alerts even with tiny drift, naming the reason, the counts and the command to review."""
    outcome = Outcome(status="halted", total_abs_drift=Decimal("0.05"),
                      halted_reason="6.0% of checked customers drift, above max_drift_ratio 5.0%")
    alert = alert_for_summary(outcome)
    assert alert is not None and alert.kind == "halted"
    assert "halted" in alert.subject and "6.0%" in alert.text
    assert "reconciler tasks list --run 7" in alert.text and "20000 customers checked" in alert.text


def test_failed_run_alert_carries_the_error() -> None:
    """A failed run alerts with its recorded error."""
    alert = alert_for_summary(Outcome(status="failed", error="compare_chunk[2]: OperationalError: gone"))
    assert alert is not None and alert.kind == "failed" and "OperationalError: gone" in alert.text


def test_failure_alert_names_where_and_run() -> None:
    """A task failure alert names the run, the task and the error; without a run it says so."""
    alert = alert_for_failure(run_id=12, where="ledger_reconciliation.compare_chunk[3] (try 4)", error="boom")
    assert alert.subject == "Reconciliation run 12 failed in ledger_reconciliation.compare_chunk[3] (try 4)"
    assert alert.text.startswith("boom.") and alert.details["error"] == "boom"
    assert "before a run was recorded" in alert_for_failure(run_id=None, where="start_run", error="x").subject


def test_staleness_is_strictly_older_than_max_age() -> None:
    """Exactly 26 hours is fine; a second more alerts; the default max age is 26 hours."""
    assert dt.timedelta(hours=26) == DEFAULT_MAX_AGE
    assert alert_for_staleness(NOW - dt.timedelta(hours=26), NOW) is None
    alert = alert_for_staleness(NOW - dt.timedelta(hours=26, seconds=1), NOW)
    assert alert is not None and alert.kind == "stale" and "26.0 hours" in alert.subject


def test_never_succeeded_is_stale() -> None:
    """With no successful run at all the watchdog alerts (a job that never ran is not green)."""
    alert = alert_for_staleness(None, NOW, dt.timedelta(hours=2))
    assert alert is not None and alert.kind == "stale" and alert.details["last_success_at"] is None


def test_staleness_rejects_a_non_positive_age() -> None:
    """A zero max age is a configuration error, not a permanent alert."""
    with pytest.raises(InvalidOperationError, match="max_age must be positive"):
        alert_for_staleness(None, NOW, dt.timedelta(0))


def test_unknown_alert_kind_is_rejected() -> None:
    """Alert kinds are a closed set."""
    with pytest.raises(InvalidOperationError, match="alert kind"):
        Alert("panic", "s", "t")


def test_webhook_payload_is_json_with_text_first() -> None:
    """The payload has the chat-friendly text plus structured fields; decimals are strings."""
    alert = alert_for_summary(replace(Outcome(), status="halted"))
    assert alert is not None
    payload = alert.to_json()
    assert payload["text"] == f"{alert.subject}\n{alert.text}" == alert.message()
    assert payload["kind"] == "halted" and payload["source"] == "reconciler" and payload["run_id"] == 7
    assert payload["details"]["total_abs_drift"] == "250.00"  # type: ignore[index]


def test_threshold_parsing() -> None:
    """Empty disables; money parses exactly; negative and float thresholds are refused."""
    assert parse_drift_threshold(None) is None and parse_drift_threshold("  ") is None
    assert parse_drift_threshold("1000") == Decimal("1000.00")
    with pytest.raises(InvalidOperationError):
        parse_drift_threshold("-1")
    with pytest.raises(InvalidAmountError):
        parse_drift_threshold(10.5)


def test_links_go_into_the_text_the_payload_and_the_mail() -> None:
    """An alert with links shows the Airflow run, the log and the report in every form it is sent in."""
    alert = alert_for_failure(run_id=3, where="t", error="<boom> & co").with_links(
        run="http://af/dags/d/runs/r", log="http://af/dags/d/runs/r/tasks/t", report=None)
    assert alert.message().splitlines()[-2:] == ["Airflow run: http://af/dags/d/runs/r",
                                                 "Log: http://af/dags/d/runs/r/tasks/t"]
    assert alert.to_json()["links"] == {"run": "http://af/dags/d/runs/r", "log": "http://af/dags/d/runs/r/tasks/t"}
    assert alert.email_subject() == "[reconciler] Reconciliation run 3 failed in t"
    body = alert.email_html()
    assert "&lt;boom&gt; &amp; co" in body and '<a href="http://af/dags/d/runs/r">' in body and "<boom>" not in body
    with pytest.raises(InvalidOperationError, match="alert links"):
        Alert("failed", "s", "t", links={"dashboard": "x"})


def test_review_timeout_alerts_and_says_nothing_was_corrected() -> None:
    """A clean run whose review got no answer in time alerts (kind review); an answered review is described
    in the text of any other alert and alone raises none."""
    timed_out = ReviewOutcome(pending=2, timed_out=True)
    alert = alert_for_summary(Outcome(total_abs_drift=Decimal("5.00")), review=timed_out)
    assert alert is not None and alert.kind == "review" and "nothing of the 2 tasks" in alert.text
    assert alert.details["review"] == timed_out.to_json()
    answered = ReviewOutcome(pending=2, approved=1, rejected=1, approver="erin")
    assert alert_for_summary(Outcome(total_abs_drift=Decimal("5.00")), review=answered) is None
    halted = alert_for_summary(Outcome(status="halted"), review=answered)
    assert halted is not None and "Review by erin: 1 approved and corrected, 1 rejected of 2." in halted.text


def test_connection_uri_becomes_a_psycopg_url_without_airflow_extras() -> None:
    """Airflow's postgres:// URI becomes postgresql+psycopg://, keeps libpq parameters, drops extras."""
    url = database_url_from_uri(
        "postgres://fin%40ance:p%2Fw@db.internal:5433/ledger?sslmode=require&cursor=realdictcursor&__extra__=%7B%7D")
    assert url.drivername == "postgresql+psycopg" and url.username == "fin@ance" and url.password == "p/w"
    assert (url.host, url.port, url.database) == ("db.internal", 5433, "ledger")
    assert dict(url.query) == {"sslmode": "require"}


def test_socket_connection_uri_keeps_the_host_query() -> None:
    """A Unix-socket database (host in the query, as the embedded server uses) survives the conversion."""
    url = database_url_from_uri("postgres://postgres@localhost/ledger?host=%2Ftmp%2Fpg")
    assert url == make_url("postgresql+psycopg://postgres@localhost/ledger?host=/tmp/pg")


@pytest.mark.parametrize("uri, match", [
    ("mysql://u@h/db", "has type 'mysql'"),
    ("postgres://u:secret@h:5432", "names no database"),
    ("not a uri", "is not a URI"),
])
def test_bad_connection_uris_are_rejected_without_the_password(uri: str, match: str) -> None:
    """Wrong type, no database or garbage raise a named error that never shows the password."""
    with pytest.raises(InvalidOperationError, match=match) as raised:
        database_url_from_uri(uri)
    assert "secret" not in str(raised.value)


def _busy(customer_id: int, runs: int) -> dict[str, Any]:
    return {"customer_id": customer_id, "task_id": 40 + customer_id, "runs_in_a_row": runs,
            "lockers": [{"pid": 4242, "application_name": "billing-batch", "state": "idle in transaction"}]}


def test_a_customer_busy_three_runs_in_a_row_alerts_and_names_the_locker() -> None:
    """A clean run alerts once a customer was skipped as busy for BUSY_RUNS_CALLOUT runs in a row, naming who
    holds the lock; two runs in a row do not alert yet."""
    assert alert_for_summary(Outcome(busy=[_busy(8, 2)])) is None
    alert = alert_for_summary(Outcome(busy=[_busy(8, 3), _busy(9, 1)]))
    assert alert is not None and alert.kind == "busy"
    assert "customer 8 for 3 runs, locked by pid 4242 (billing-batch)" in alert.text
    assert "customer 9" not in alert.text


def test_a_drift_alert_also_calls_out_long_busy_customers() -> None:
    """A drift alert keeps its kind and carries the long-busy customers in its text."""
    alert = alert_for_summary(Outcome(total_abs_drift=Decimal("5000.00"), busy=[_busy(8, 4)]))
    assert alert is not None and alert.kind == "drift"
    assert "customer 8 for 4 runs" in alert.text
