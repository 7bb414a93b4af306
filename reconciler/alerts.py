"""Alerts for finance on call: when to raise one and what it says.

Invariant: a run that halts or fails, a run whose drift is above the agreed amount, a review nobody
answered in time, and a night without a successful run each produce exactly one :class:`Alert`; a clean
run produces none. Everything here is pure (values in, an ``Alert``, a JSON payload or a mail body out)
except the two watchdog queries. Delivery belongs to the orchestrator: in Airflow the provider notifiers
(``SmtpNotifier``, ``HttpNotifier``) in ``dags/reconciler_alerts.py`` send what these functions render.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import Engine, func, select

from reconciler.corrections import BUSY_RUNS_CALLOUT
from reconciler.errors import InvalidOperationError
from reconciler.money import format_money, to_money
from reconciler.row_locks import format_lockers
from reconciler.schema import runs

#: Alert when a run found more absolute drift than this in total (configurable per run).
DEFAULT_ALERT_DRIFT_ABOVE = Decimal("1000.00")
#: The watchdog alerts when no run has succeeded for longer than this.
DEFAULT_MAX_AGE = dt.timedelta(hours=26)
ALERT_KINDS = ("halted", "failed", "drift", "busy", "review", "stale")
SOURCE = "reconciler"
#: The labels of an alert's links, in the order messages show them.
LINK_LABELS = {"run": "Airflow run", "log": "Log", "report": "Report"}


@dataclass(frozen=True)
class Alert:
    """One message for the people on call. ``details`` holds JSON-able facts (decimals as strings)."""

    kind: str
    subject: str
    text: str
    run_id: int | None = None
    details: Mapping[str, object] = field(default_factory=dict)
    #: Where to look: ``run`` (the orchestrator's run page), ``log`` (the log of the step that alerted),
    #: ``report`` (the finance report's folder or URL); see :data:`LINK_LABELS`.
    links: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ALERT_KINDS:
            raise InvalidOperationError(f"alert kind must be one of {', '.join(ALERT_KINDS)}, got {self.kind!r}")
        unknown = sorted(set(self.links) - set(LINK_LABELS))
        if unknown:
            raise InvalidOperationError(f"alert links must be among {', '.join(LINK_LABELS)}, got {unknown}")

    def with_links(self, **links: str | None) -> Alert:
        """This alert with the given links added (``None`` or empty values are left out)."""
        return replace(self, links={**self.links, **{name: url for name, url in links.items() if url}})

    def message(self) -> str:
        """The plain-text message: subject, text, then one line per link."""
        lines = [self.subject, self.text]
        lines += [f"{label}: {self.links[name]}" for name, label in LINK_LABELS.items() if self.links.get(name)]
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        """The webhook payload: ``text`` first (what chat webhooks such as Slack's display), then the facts."""
        return {"text": self.message(), "source": SOURCE, "kind": self.kind, "subject": self.subject,
                "run_id": self.run_id, "details": dict(self.details), "links": dict(self.links)}

    def email_subject(self) -> str:
        return f"[reconciler] {self.subject}"

    def email_html(self) -> str:
        """The mail body: the text, the links as anchors, the sorted details; every value HTML-escaped."""
        links = "".join(f'<li>{html.escape(label)}: <a href="{html.escape(self.links[name])}">'
                        f"{html.escape(self.links[name])}</a></li>"
                        for name, label in LINK_LABELS.items() if self.links.get(name))
        details = "".join(f"<tr><th align=\"left\">{html.escape(str(key))}</th><td>{html.escape(str(value))}</td></tr>"
                          for key, value in sorted(self.details.items()))
        return (f"<p>{html.escape(self.text)}</p>" + (f"<ul>{links}</ul>" if links else "")
                + (f"<table>{details}</table>" if details else ""))


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


def alert_for_summary(summary: RunOutcome, *, drift_above: Decimal | None = DEFAULT_ALERT_DRIFT_ABOVE,
                      review: ReviewOutcome | None = None) -> Alert | None:
    """The alert a finished run deserves, or None for a run finance need not hear about.

    Halted and failed runs always alert; a succeeded run alerts when the absolute drift it found exceeds
    ``drift_above`` (strictly; ``None`` disables that check), when a customer's correction has been skipped as
    busy for :data:`BUSY_RUNS_CALLOUT` runs in a row, or when the four-eyes review of its ``needs_review``
    tasks got no answer in time or an answer that was refused (nothing was corrected). Every message calls out
    busy customers and the review's outcome, when there was one.
    """
    details = _outcome_details(summary)
    report = _busy_line(summary) + (f" Report: {summary.report_path}." if summary.report_path else "")
    if review is not None:
        details["review"] = review.to_json()
        report = f" {review.describe()}{report}"
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
    if review is not None and review.unanswered:
        what = "in time" if review.timed_out else "acceptably (four-eyes rule)"
        return Alert("review", f"Reconciliation run {summary.run_id}: nobody reviewed {review.pending} "
                               f"correction{'s' if review.pending != 1 else ''} {what}",
                     f"{_counts_line(summary)}{report} Review them with `reconciler tasks list --status needs_review` "
                     f"and `reconciler tasks resolve`, or in the next run's approval step.", summary.run_id, details)
    long_busy = _long_busy(summary)
    if long_busy:
        return Alert("busy", f"Reconciliation run {summary.run_id}: {len(long_busy)} customer(s) locked by another "
                             f"session for {BUSY_RUNS_CALLOUT}+ runs in a row",
                     f"{_counts_line(summary)}{report}", summary.run_id, details)
    return None


@dataclass(frozen=True)
class ReviewOutcome:
    """What the four-eyes review of a run's ``needs_review`` tasks came to."""

    pending: int
    approved: int = 0
    rejected: int = 0
    timed_out: bool = False
    approver: str | None = None
    note: str | None = None
    #: Why the answer was not applied (e.g. the approver triggered the run): nothing was corrected.
    refused: str | None = None

    @property
    def unanswered(self) -> bool:
        """Nothing of the review was applied: no answer in time, or an answer that was refused."""
        return self.timed_out or self.refused is not None

    def describe(self) -> str:
        if self.refused is not None:
            return f"Review: the answer of {self.approver} was refused ({self.refused}); nothing was corrected."
        if self.timed_out:
            return (f"Review: no answer within the approval timeout; nothing of the {self.pending} task"
                    f"{'s' if self.pending != 1 else ''} needing review was corrected.")
        who = f" by {self.approver}" if self.approver else ""
        return f"Review{who}: {self.approved} approved and corrected, {self.rejected} rejected of {self.pending}."

    def to_json(self) -> dict[str, object]:
        return {"pending": self.pending, "approved": self.approved, "rejected": self.rejected,
                "timed_out": self.timed_out, "approver": self.approver, "note": self.note, "refused": self.refused}


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
