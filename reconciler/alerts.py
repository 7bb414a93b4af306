"""Alerts for finance on call: when to raise one, what it says, and how it is delivered.

Invariant: a run that halts or fails, a run whose drift is above the agreed amount, and a night without
a successful run each produce exactly one :class:`Alert`; a clean run produces none. Deciding is pure
(values in, an ``Alert`` or ``None`` out); delivery is plain stdlib (an HTTP POST of JSON to a webhook,
or a mail over SMTP) so any orchestrator can use it. Nothing here imports airflow: the Airflow notifier in
``dags/`` only looks up the channel and calls these functions.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import smtplib
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from email.message import EmailMessage
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

from sqlalchemy import Engine, func, select

from reconciler.corrections import BUSY_RUNS_CALLOUT
from reconciler.errors import AlertDeliveryError, InvalidOperationError
from reconciler.money import format_money, to_money
from reconciler.row_locks import format_lockers
from reconciler.schema import runs

#: Alert when a run found more absolute drift than this in total (configurable per run).
DEFAULT_ALERT_DRIFT_ABOVE = Decimal("1000.00")
#: The watchdog alerts when no run has succeeded for longer than this.
DEFAULT_MAX_AGE = dt.timedelta(hours=26)
DEFAULT_TIMEOUT = 10.0
ALERT_KINDS = ("halted", "failed", "drift", "busy", "stale")
SOURCE = "reconciler"


@dataclass(frozen=True)
class Alert:
    """One message for the people on call. ``details`` holds JSON-able facts (decimals as strings)."""

    kind: str
    subject: str
    text: str
    run_id: int | None = None
    details: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ALERT_KINDS:
            raise InvalidOperationError(f"alert kind must be one of {', '.join(ALERT_KINDS)}, got {self.kind!r}")

    def to_json(self) -> dict[str, object]:
        """The webhook payload: ``text`` first (what chat webhooks display), then the structured facts."""
        return {"text": f"{self.subject}\n{self.text}", "source": SOURCE, "kind": self.kind,
                "subject": self.subject, "run_id": self.run_id, "details": dict(self.details)}


class RunOutcome(Protocol):
    """What an alert needs from a finished run (``reconciler.pipeline.RunSummary`` has it)."""

    @property
    def run_id(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def customers_checked(self) -> int: ...
    @property
    def drift_count(self) -> int: ...
    @property
    def corrected(self) -> int: ...
    @property
    def needs_review(self) -> int: ...
    @property
    def open(self) -> int: ...
    @property
    def total_abs_drift(self) -> Decimal: ...
    @property
    def halted_reason(self) -> str | None: ...
    @property
    def report_path(self) -> str | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def busy(self) -> list[dict[str, Any]]: ...


def _long_busy(summary: RunOutcome) -> list[dict[str, Any]]:
    return [item for item in summary.busy if int(item.get("runs_in_a_row") or 1) >= BUSY_RUNS_CALLOUT]


def _busy_line(summary: RunOutcome) -> str:
    """The customers busy for BUSY_RUNS_CALLOUT runs in a row or more, called out by name."""
    long_busy = _long_busy(summary)
    if not long_busy:
        return ""
    named = "; ".join(f"customer {item.get('customer_id')} for {item.get('runs_in_a_row')} runs, locked by "
                      f"{format_lockers(item.get('lockers') or [])}" for item in long_busy[:10])
    more = f" and {len(long_busy) - 10} more" if len(long_busy) > 10 else ""
    return (f" Corrections skipped because another session held the row lock, run after run: {named}{more}. "
            f"Find and end the session holding the lock.")


def _outcome_details(summary: RunOutcome) -> dict[str, object]:
    return {"status": summary.status, "customers_checked": summary.customers_checked,
            "drift_count": summary.drift_count, "corrected": summary.corrected,
            "needs_review": summary.needs_review, "open": summary.open,
            "total_abs_drift": str(summary.total_abs_drift), "halted_reason": summary.halted_reason,
            "error": summary.error, "report_path": summary.report_path, "busy": summary.busy}


def _counts_line(summary: RunOutcome) -> str:
    return (f"{summary.customers_checked} customers checked, {summary.drift_count} drifting "
            f"(total {format_money(summary.total_abs_drift)}): {summary.corrected} corrected, "
            f"{summary.needs_review} need review, {summary.open} open.")


def alert_for_summary(summary: RunOutcome, *, drift_above: Decimal | None = DEFAULT_ALERT_DRIFT_ABOVE
                      ) -> Alert | None:
    """The alert a finished run deserves, or None for a run finance need not hear about.

    Halted and failed runs always alert; a succeeded run alerts when the absolute drift it found exceeds
    ``drift_above`` (strictly; ``None`` disables that check), or when a customer's correction has been
    skipped as busy for :data:`BUSY_RUNS_CALLOUT` runs in a row. Every message calls out such customers.
    """
    details = _outcome_details(summary)
    report = _busy_line(summary) + (f" Report: {summary.report_path}." if summary.report_path else "")
    if summary.status == "halted":
        return Alert("halted", f"Reconciliation run {summary.run_id} halted",
                     f"{summary.halted_reason or 'guardrail tripped'}. {_counts_line(summary)} Review the "
                     f"drifting customers (`reconciler tasks list --run {summary.run_id}`) before rerunning with "
                     f"a higher max_drift_ratio.{report}", summary.run_id, details)
    if summary.status == "failed":
        return Alert("failed", f"Reconciliation run {summary.run_id} failed",
                     f"{summary.error or 'the run stopped with an error'}. {_counts_line(summary)} "
                     f"Fix the cause and trigger the run again; it redoes the work without duplicates.{report}",
                     summary.run_id, details)
    if drift_above is not None and summary.total_abs_drift > drift_above:
        return Alert("drift", f"Reconciliation run {summary.run_id} found {format_money(summary.total_abs_drift)} "
                              f"of drift (alert threshold {format_money(drift_above)})",
                     f"{_counts_line(summary)}{report}", summary.run_id,
                     {**details, "alert_drift_above": str(drift_above)})
    long_busy = _long_busy(summary)
    if long_busy:
        return Alert("busy", f"Reconciliation run {summary.run_id}: {len(long_busy)} customer(s) locked by another "
                             f"session for {BUSY_RUNS_CALLOUT}+ runs in a row",
                     f"{_counts_line(summary)}{report}", summary.run_id, details)
    return None


def alert_for_failure(*, run_id: int | None, where: str, error: str) -> Alert:
    """The alert for a run step that failed with ``error`` (``where``: e.g. the Airflow task and try)."""
    subject = (f"Reconciliation run {run_id} failed in {where}" if run_id is not None
               else f"Reconciliation failed in {where} before a run was recorded")
    return Alert("failed", subject,
                 f"{error.strip() or 'no error message'}. The run is marked failed; fix the cause and trigger the "
                 f"run again: it redoes the work without duplicates.",
                 run_id, {"where": where, "error": error.strip()[:2000]})


@dataclass(frozen=True)
class RunRecord:
    """The newest run in ``reconciler.runs``, for the watchdog's message."""

    run_id: int
    status: str
    trigger: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    error: str | None

    def describe(self) -> str:
        ended = f", finished {self.finished_at.isoformat()}" if self.finished_at else ""
        error = f": {self.error}" if self.error else ""
        started = self.started_at.isoformat()
        return f"run {self.run_id} ({self.trigger}, started {started}{ended}) is {self.status}{error}"


def alert_for_staleness(last_success_at: dt.datetime | None, now: dt.datetime,
                        max_age: dt.timedelta = DEFAULT_MAX_AGE, *, latest: RunRecord | None = None) -> Alert | None:
    """An alert when no run has succeeded within ``max_age`` of ``now`` (strictly older), else None.

    No successful run at all is stale too: a job that never ran must not pass as green. ``latest`` (the
    newest run, whatever its status) is named in the alert to point at the cause.
    """
    if max_age <= dt.timedelta(0):
        raise InvalidOperationError(f"max_age must be positive, got {max_age}; the default is {DEFAULT_MAX_AGE}")
    hours = max_age.total_seconds() / 3600
    newest = f" The newest {latest.describe()}." if latest is not None else " No run was recorded at all."
    details: dict[str, object] = {"max_age_hours": f"{hours:g}", "latest_run_id": latest.run_id if latest else None,
                                  "latest_run_status": latest.status if latest else None}
    if last_success_at is None:
        return Alert("stale", "No reconciliation run has ever succeeded",
                     f"The ledger has no succeeded run in reconciler.runs; the watchdog expects one every "
                     f"{hours:g} hours.{newest} Check that the nightly DAG is unpaused and its runs succeed.",
                     None, {**details, "last_success_at": None})
    age = now - last_success_at
    if age <= max_age:
        return None
    return Alert("stale", f"No reconciliation run has succeeded for {age.total_seconds() / 3600:.1f} hours",
                 f"The last successful run finished at {last_success_at.isoformat()}, more than {hours:g} hours "
                 f"ago.{newest} A night was skipped or its runs fail: check the ledger_reconciliation DAG.",
                 None, {**details, "last_success_at": last_success_at.isoformat(),
                        "age_hours": f"{age.total_seconds() / 3600:.2f}"})


def last_success_at(engine: Engine) -> dt.datetime | None:
    """When the most recent successful run finished (None when no run has succeeded)."""
    with engine.connect() as conn:
        value = conn.execute(select(func.max(runs.c.finished_at)).where(runs.c.status == "succeeded")).scalar_one()
    return value if isinstance(value, dt.datetime) else None


def latest_run(engine: Engine) -> RunRecord | None:
    """The newest run whatever its status (None when there is none)."""
    with engine.connect() as conn:
        row = conn.execute(select(runs.c.id, runs.c.status, runs.c.trigger, runs.c.started_at, runs.c.finished_at,
                                  runs.c.error).order_by(runs.c.id.desc()).limit(1)).one_or_none()
    if row is None:
        return None
    return RunRecord(int(row.id), str(row.status), str(row.trigger), row.started_at, row.finished_at, row.error)


def parse_drift_threshold(value: object) -> Decimal | None:
    """``alert_drift_above`` as money; ``None`` or an empty string disables the drift alert."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    threshold = to_money(value, name="alert_drift_above")
    if threshold < 0:
        raise InvalidOperationError(f"alert_drift_above must be >= 0, got {value!r}; leave it empty to disable")
    return threshold


# --- delivery -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookChannel:
    """POST the alert as JSON to ``url``."""

    url: str = field(repr=False)  # a webhook URL is a credential (user:password@, a token in its path)
    timeout: float = DEFAULT_TIMEOUT

    def describe(self) -> str:
        """Scheme, host and port only: never the path, query or user:password@ (they may hold secrets)."""
        parts = urlsplit(self.url)
        try:
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            port = ":(invalid port)"
        return f"webhook {parts.scheme}://{parts.hostname}{port}"


@dataclass(frozen=True)
class EmailChannel:
    """Mail the alert through an SMTP server."""

    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool = False
    use_ssl: bool = False
    timeout: float = DEFAULT_TIMEOUT

    def describe(self) -> str:
        return f"smtp {self.host}:{self.port} to {', '.join(self.recipients)}"


Channel = WebhookChannel | EmailChannel


def _flag(value: object) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")


def channel_from_connection(conn_type: str, *, host: str | None, port: int | None = None, login: str | None = None,
                            password: str | None = None, schema: str | None = None,
                            extra: Mapping[str, object] | None = None) -> Channel:
    """The delivery channel described by a connection's fields (Airflow's connection model, no airflow import).

    - ``http``/``https``: a webhook at ``conn_type://host[:port]/schema`` (or ``extra["url"]``); e.g.
      ``AIRFLOW_CONN_RECONCILER_ALERTS='https://hooks.example.com/services/T0/B0/XYZ'``.
    - ``smtp``/``smtps``/``email``: mail via host:port, with ``extra`` ``to`` (comma-separated),
      ``from`` (default ``reconciler@<host>``), ``starttls`` and ``timeout``; login/password when set.
    """
    extra = dict(extra or {})
    timeout = float(str(extra.get("timeout", DEFAULT_TIMEOUT)))
    kind = conn_type.strip().lower()
    if kind in ("http", "https", "webhook"):
        if extra.get("url"):
            url = str(extra["url"])
        else:
            if not host:
                raise InvalidOperationError("the alerts webhook connection has no host; set it to the webhook URL, "
                                            "e.g. https://hooks.example.com/services/...")
            scheme = "https" if kind == "webhook" else kind
            url = f"{scheme}://{host}{f':{port}' if port else ''}/{(schema or '').lstrip('/')}"
        if urlsplit(url).scheme not in ("http", "https"):
            raise InvalidOperationError("the alerts webhook URL must start with http:// or https://")
        return WebhookChannel(url=url, timeout=timeout)
    if kind in ("smtp", "smtps", "email"):
        recipients = tuple(part.strip() for part in str(extra.get("to", "")).split(",") if part.strip())
        if not host or not recipients:
            raise InvalidOperationError(
                "the alerts SMTP connection needs a host and extra {\"to\": \"finance@example.com\"}; "
                f"got host {host!r} and to {extra.get('to')!r}")
        use_ssl = kind == "smtps" or _flag(extra.get("ssl", False))
        return EmailChannel(host=host, port=port or (465 if use_ssl else 25),
                            sender=str(extra.get("from") or f"reconciler@{host}"), recipients=recipients,
                            username=login or None, password=password or None,
                            starttls=_flag(extra.get("starttls", False)), use_ssl=use_ssl, timeout=timeout)
    raise InvalidOperationError(
        f"the alerts connection has type {conn_type!r}; use http/https for a webhook or smtp/smtps for mail")


def post_webhook(channel: WebhookChannel, alert: Alert) -> int:
    """POST ``alert`` as JSON; return the HTTP status, or raise :class:`AlertDeliveryError` (non-2xx, no answer)."""
    body = json.dumps(alert.to_json(), sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "User-Agent": SOURCE}
    url = channel.url
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        # user:password@ in the URL becomes a Basic Authorization header: urllib would put it in the host (and
        # in its error message) instead.
        credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode("ascii")
        url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    try:
        request = urllib.request.Request(url, data=body, method="POST", headers=headers)
        with urllib.request.urlopen(request, timeout=channel.timeout) as response:
            return int(response.status)
    except (ValueError, http.client.InvalidURL):  # a malformed URL: its text (maybe a secret) is never repeated
        raise AlertDeliveryError(f"{channel.describe()} is not a valid webhook URL; the alert {alert.subject!r} was "
                                 f"only logged; fix the connection reconciler_alerts") from None
    except urllib.error.HTTPError as exc:
        raise AlertDeliveryError(f"{channel.describe()} answered HTTP {exc.code} to the alert "
                                 f"{alert.subject!r}; check the webhook URL in connection reconciler_alerts") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AlertDeliveryError(f"{channel.describe()} is unreachable ({reason}); the alert {alert.subject!r} was "
                                 f"only logged") from None


def build_email(channel: EmailChannel, alert: Alert) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = f"[reconciler] {alert.subject}"
    message["From"] = channel.sender
    message["To"] = ", ".join(channel.recipients)
    details = "\n".join(f"  {key}: {value}" for key, value in sorted(alert.details.items()))
    message.set_content(f"{alert.text}\n\n{details}\n" if details else f"{alert.text}\n")
    return message


def send_email(channel: EmailChannel, alert: Alert) -> None:
    """Mail ``alert``; raise :class:`AlertDeliveryError` when the server refuses or cannot be reached."""
    message = build_email(channel, alert)
    try:
        smtp: smtplib.SMTP
        if channel.use_ssl:
            smtp = smtplib.SMTP_SSL(channel.host, channel.port, timeout=channel.timeout,
                                    context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(channel.host, channel.port, timeout=channel.timeout)
        with smtp:
            if channel.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if channel.username:
                smtp.login(channel.username, channel.password or "")
            smtp.send_message(message)
    except (smtplib.SMTPException, OSError) as exc:
        raise AlertDeliveryError(f"{channel.describe()} refused or could not take the alert {alert.subject!r}: "
                                 f"{exc}") from None


def deliver(alert: Alert, channel: Channel) -> None:
    """Send ``alert`` over ``channel``."""
    if isinstance(channel, WebhookChannel):
        post_webhook(channel, alert)
    else:
        send_email(channel, alert)
