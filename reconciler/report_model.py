"""The finance report of a run as plain values: a pure function of rows already fetched.

Invariant: every amount is a ``Decimal`` taken from PostgreSQL ``numeric`` sums or derived from them by
exact ``Decimal`` arithmetic, so each tie-out line sums exactly; nothing here reads the clock, the
database or the file system (``now`` is an input), so the same rows always give the same report.

The side sections that carry no tie-out line (data quality, writers around the core, busy customers, the
audit head) are :mod:`reconciler.report_sections`'. What stays here (about 600 lines) is the money: the rows
the tie-out is derived from, the tie-out, summary, causes, aging and history derived from them, and their JSON.
It stays in one file on purpose, because checking that every line sums exactly means reading the inputs and
their derivations together.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from reconciler.money import ZERO, format_money
from reconciler.report_sections import (
    AuditAnchor,
    BusyLine,
    QualityLine,
    QualityView,
    WritersFacts,
    WritersView,
    build_busy,
    build_quality,
    build_writers,
    observed,
    severity,
)
from reconciler.vocabulary import Cause

#: Upper bounds (in days) of the aging buckets of unresolved tasks; the last bucket is open-ended.
AGING_BOUNDS_DAYS = (1, 7, 30)
AGING_LABELS = ("0-1 days", "1-7 days", "7-30 days", "30+ days")
#: How many of the largest drifts the report lists.
DEFAULT_TOP_DRIFTS = 20
#: How many runs the trend charts cover.
DEFAULT_TREND_RUNS = 30

UNRESOLVED = ("open", "needs_review")
#: How a finding of the run stands now; "no_task" when no task was opened for it (e.g. a halted run).
OUTCOMES = ("corrected", "dismissed", "needs_review", "open", "no_task")

CAUSE_LABELS: dict[str | None, str] = {
    Cause.MISSING_ENTRY: "Missing ledger entry",
    Cause.DUPLICATED_ENTRY: "Duplicated ledger entry",
    Cause.SIGN_FLIPPED_ENTRY: "Entry with flipped sign",
    Cause.UNAPPLIED_ENTRY: "Entry not applied to the balance",
    Cause.BALANCE_WRITTEN_AROUND_LEDGER: "Balance written around the ledger",
    Cause.CHAIN_MISMATCH: "Balance chain mismatch (real-time)",
    Cause.UNKNOWN: "Unknown",
    None: "Not explained",
}
assert set(Cause) <= set(CAUSE_LABELS), "every cause needs its label"


# ---- inputs: rows as fetched -------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunFacts:
    """The run row and its parameters."""

    run_id: int
    status: str
    trigger: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    customers_checked: int
    drift_count: int
    total_abs_drift: Decimal
    params: Mapping[str, Any] = field(default_factory=dict)
    outcome: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    mode: str | None = None
    mode_reason: str | None = None
    verified_from: str | None = None
    verified_to: str | None = None


@dataclass(frozen=True)
class OutcomeGroup:
    """The run's findings grouped by how their task stands now (and, for corrections, the policy used).

    Sums are as found by the comparison (``reconciler.findings``), computed in SQL."""

    outcome: str
    policy: str | None
    customers: int
    stored_total: Decimal
    ledger_total: Decimal
    net_drift: Decimal
    abs_drift: Decimal


@dataclass(frozen=True)
class BookTotals:
    """Totals over the run's scope now, read in one snapshot: every customer's cached balance and every
    ledger entry, plus the current drift of the customers whose tasks are unresolved."""

    customers: int
    cached_total: Decimal
    ledger_total: Decimal
    unresolved_customers: int
    unresolved_net_drift: Decimal


@dataclass(frozen=True)
class ComparedTotals:
    """The run's scope as its comparison statements saw it (``reconciler.run_chunks``, migration 0008): each
    chunk's customers, sum of cached balances and sum of ledger sums, read in that chunk's one snapshot, and
    the net drift of the customers the same statements found drifting (``reconciler.findings``).

    ``chunks_with_totals < compared_chunks`` when some chunks were compared before totals were recorded."""

    chunks: int
    compared_chunks: int
    chunks_with_totals: int
    customers: int
    cached_total: Decimal
    ledger_total: Decimal
    found_customers: int
    found_net_drift: Decimal
    first_compared_at: dt.datetime | None = None
    last_compared_at: dt.datetime | None = None
    first_snapshot: str | None = None
    last_snapshot: str | None = None

    @property
    def complete(self) -> bool:
        return self.chunks > 0 and self.chunks_with_totals == self.compared_chunks == self.chunks

    def describe_snapshot(self) -> str:
        """Which snapshot the totals are from, in words."""
        if self.chunks_with_totals == 0:
            return "no chunk has recorded totals"
        when = ""
        if self.first_compared_at is not None and self.last_compared_at is not None:
            when = (f", between {self.first_compared_at:%Y-%m-%d %H:%M:%S} and "
                    f"{self.last_compared_at:%Y-%m-%d %H:%M:%S} UTC")
        shots = f" (snapshots {self.first_snapshot} ... {self.last_snapshot})" if self.first_snapshot else ""
        return (f"as compared by this run: {self.chunks_with_totals:,} chunk(s), each read in one snapshot of its "
                f"own comparison statement{when}{shots}")


@dataclass(frozen=True)
class DriftLine:
    """One finding with its explanation and its task."""

    customer_id: int
    stored_balance: Decimal
    ledger_sum: Decimal
    drift: Decimal
    cause: str | None
    summary: str | None
    task_id: int | None
    task_status: str | None


@dataclass(frozen=True)
class CauseGroup:
    cause: str | None
    customers: int
    net_drift: Decimal
    abs_drift: Decimal


@dataclass(frozen=True)
class UnresolvedTask:
    """A task still open or waiting for review, for aging."""

    task_id: int
    customer_id: int
    status: str
    drift: Decimal
    opened_at: dt.datetime


@dataclass(frozen=True)
class ChangeCounts:
    """Drifting customers compared with the previous run over the same scope."""

    previous_run_id: int | None
    new: int
    persisting: int
    resolved: int
    new_abs_drift: Decimal = ZERO
    persisting_abs_drift: Decimal = ZERO


@dataclass(frozen=True)
class HistoryPoint:
    """One earlier (or this) run for the trends; hours to resolve cover the tasks the run opened."""

    run_id: int
    started_at: dt.datetime
    status: str
    drift_count: int
    total_abs_drift: Decimal
    resolved_tasks: int
    median_hours_to_resolve: float | None


@dataclass(frozen=True)
class ReportInput:
    run: RunFacts
    outcomes: tuple[OutcomeGroup, ...]
    top_drifts: tuple[DriftLine, ...]
    causes: tuple[CauseGroup, ...]
    unresolved: tuple[UnresolvedTask, ...]
    changes: ChangeCounts
    history: tuple[HistoryPoint, ...]
    quality: tuple[QualityLine, ...]
    now: dt.datetime
    book: BookTotals | None = None
    data_docs_href: str | None = None
    compared: ComparedTotals | None = None
    writers: WritersFacts | None = None
    audit_head: AuditAnchor | None = None


# ---- outputs: what the page, the CSV check and summary.json show --------------------------------------------

@dataclass(frozen=True)
class TieOutLine:
    """One line of the tie-out. ``level`` 0 is a total, 1 a component, 2 a detail of a component."""

    key: str
    label: str
    amount: Decimal
    level: int = 0
    customers: int | None = None
    note: str = ""


@dataclass(frozen=True)
class PolicyCount:
    policy: str
    customers: int
    net_drift: Decimal
    abs_drift: Decimal


@dataclass(frozen=True)
class Summary:
    run_id: int
    status: str
    trigger: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    scope: str
    tolerance: str | None
    policy: str | None
    dry_run: bool
    customers_checked: int
    drifting: int
    total_abs_drift: Decimal
    net_drift: Decimal
    corrected: int
    corrected_abs_drift: Decimal
    corrected_by_policy: tuple[PolicyCount, ...]
    dismissed: int
    needs_review: int
    open: int
    without_task: int
    halted: bool
    halted_reason: str | None
    error: str | None
    mode: str | None = None
    mode_reason: str | None = None
    verified_from: str | None = None
    verified_to: str | None = None


@dataclass(frozen=True)
class AgingBucket:
    label: str
    tasks: int
    abs_drift: Decimal
    net_drift: Decimal
    needs_review: int


@dataclass(frozen=True)
class CauseLine:
    cause: str
    label: str
    customers: int
    net_drift: Decimal
    abs_drift: Decimal
    share_percent: Decimal


@dataclass(frozen=True)
class ReportModel:
    summary: Summary
    tie_out_found: tuple[TieOutLine, ...]
    tie_out_book: tuple[TieOutLine, ...]
    top_drifts: tuple[DriftLine, ...]
    causes: tuple[CauseLine, ...]
    aging: tuple[AgingBucket, ...]
    changes: ChangeCounts
    history: tuple[HistoryPoint, ...]
    quality: QualityView
    warnings: tuple[str, ...]
    now: dt.datetime
    tie_out_compared: tuple[TieOutLine, ...] = ()
    compared_snapshot: str | None = None
    writers: WritersView | None = None
    busy: tuple[BusyLine, ...] = ()
    audit_head: AuditAnchor | None = None

    def to_json(self) -> dict[str, object]:
        """summary.json: decimals as strings, times ISO 8601."""
        s = self.summary
        return {
            "run_id": s.run_id, "status": s.status, "trigger": s.trigger,
            "started_at": _iso(s.started_at), "finished_at": _iso(s.finished_at), "generated_at": _iso(self.now),
            "scope": s.scope, "mode": s.mode, "mode_reason": s.mode_reason, "verified_from": s.verified_from,
            "verified_to": s.verified_to, "tolerance": s.tolerance, "policy": s.policy, "dry_run": s.dry_run,
            "customers_checked": s.customers_checked, "drift_count": s.drifting,
            "total_abs_drift": str(s.total_abs_drift), "net_drift": str(s.net_drift),
            "corrected": s.corrected, "corrected_abs_drift": str(s.corrected_abs_drift),
            "corrected_by_policy": {p.policy: {"customers": p.customers, "net_drift": str(p.net_drift),
                                               "abs_drift": str(p.abs_drift)} for p in s.corrected_by_policy},
            "dismissed": s.dismissed, "needs_review": s.needs_review, "open": s.open,
            "without_task": s.without_task, "halted": s.halted, "halted_reason": s.halted_reason,
            "error": s.error,
            "tie_out": {"as_found": [_line_json(line) for line in self.tie_out_found],
                        "as_compared": [_line_json(line) for line in self.tie_out_compared],
                        "as_compared_snapshot": self.compared_snapshot,
                        "book_now": [_line_json(line) for line in self.tie_out_book]},
            "causes": {c.cause: {"customers": c.customers, "net_drift": str(c.net_drift),
                                 "abs_drift": str(c.abs_drift)} for c in self.causes},
            "aging": {b.label: {"tasks": b.tasks, "abs_drift": str(b.abs_drift), "net_drift": str(b.net_drift),
                                "needs_review": b.needs_review} for b in self.aging},
            "changes": {"previous_run_id": self.changes.previous_run_id, "new": self.changes.new,
                        "persisting": self.changes.persisting, "resolved": self.changes.resolved},
            "quality": {"evaluated": self.quality.evaluated, "failed": self.quality.failed,
                        "warnings": self.quality.warnings, "success": self.quality.success,
                        "data_docs": self.quality.data_docs_href,
                        "results": [{"suite": q.suite, "expectation": q.expectation, "success": q.success,
                                     "severity": severity(q), "observed": observed(q)}
                                    for q in self.quality.lines]},
            "csv": {"file": "tasks.csv", "rows": s.drifting, "drift_total": str(s.net_drift),
                    "abs_drift_total": str(s.total_abs_drift)},
            "warnings": list(self.warnings),
            "writers": None if self.writers is None else {
                "window": self.writers.window, "guard_mode": self.writers.guard_mode, "writes": self.writers.writes,
                "net_amount": str(self.writers.net_amount), "abs_amount": str(self.writers.abs_amount),
                "broke_ledger": self.writers.broke_ledger,
                "writers": [{"application_name": w.application_name, "role": w.role, "fingerprint": w.fingerprint,
                             "writes": w.writes, "customers": w.customers, "net_amount": str(w.net_amount),
                             "abs_amount": str(w.abs_amount), "broke_ledger": w.broke_ledger,
                             "first_seen": _iso(w.first_seen), "last_seen": _iso(w.last_seen)}
                            for w in self.writers.lines]},
            "busy": [{"customer_id": b.customer_id, "task_id": b.task_id, "lockers": b.lockers,
                      "runs_in_a_row": b.runs_in_a_row, "called_out": b.called_out} for b in self.busy],
            "audit_head": ({"length": self.audit_head.length, "hash": self.audit_head.hash}
                           if self.audit_head else None),
        }


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _line_json(line: TieOutLine) -> dict[str, object]:
    return {"key": line.key, "label": line.label, "amount": str(line.amount), "customers": line.customers}


# ---- the pure functions -------------------------------------------------------------------------------------

def describe_incremental_scope(run: RunFacts) -> str:
    """An incremental run's scope in words: touched customers (and those with unresolved tasks)."""
    feed = run.outcome.get("feed")
    feed = feed if isinstance(feed, Mapping) else {}
    touched, pending = feed.get("touched"), feed.get("with_unresolved_tasks")
    parts = [f"{touched:,} touched" if isinstance(touched, int) else None,
             f"{pending:,} more with unresolved tasks" if isinstance(pending, int) and pending else None]
    detail = ", ".join(part for part in parts if part)
    return (f"customers touched since the last verified point ({detail}; {run.customers_checked:,} compared)"
            if detail else f"customers touched since the last verified point ({run.customers_checked:,} compared)")


def describe_scope(params: Mapping[str, Any]) -> str:
    """The run's customer scope in words, from its parameters (read defensively)."""
    ids = params.get("customer_ids")
    if isinstance(ids, list) and ids:
        shown = ", ".join(str(i) for i in ids[:10])
        more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
        return f"customers {shown}{more}"
    first, last = params.get("from_id"), params.get("to_id")
    if first is not None and last is not None:
        return f"customers {first} to {last}"
    if first is not None:
        return f"customers from {first}"
    if last is not None:
        return f"customers up to {last}"
    return "all customers"


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def build_summary(run: RunFacts, outcomes: Sequence[OutcomeGroup]) -> Summary:
    by_outcome: dict[str, list[OutcomeGroup]] = {}
    for group in outcomes:
        by_outcome.setdefault(group.outcome, []).append(group)

    def count(outcome: str) -> int:
        return sum(g.customers for g in by_outcome.get(outcome, []))

    corrected = by_outcome.get("corrected", [])
    policies: dict[str, PolicyCount] = {}
    for group in corrected:
        name = group.policy or "unknown"
        prior = policies.get(name, PolicyCount(name, 0, ZERO, ZERO))
        policies[name] = PolicyCount(name, prior.customers + group.customers, prior.net_drift + group.net_drift,
                                     prior.abs_drift + group.abs_drift)
    params, outcome = run.params, run.outcome
    halted_reason = _text(outcome.get("halted_reason"))
    return Summary(
        run_id=run.run_id, status=run.status, trigger=run.trigger, started_at=run.started_at,
        finished_at=run.finished_at,
        scope=describe_incremental_scope(run) if run.mode == "incremental" else describe_scope(params),
        tolerance=_text(params.get("tolerance")),
        policy=_text(params.get("policy")), dry_run=bool(params.get("dry_run", False)),
        customers_checked=run.customers_checked,
        drifting=sum(g.customers for g in outcomes),
        total_abs_drift=sum((g.abs_drift for g in outcomes), ZERO),
        net_drift=sum((g.net_drift for g in outcomes), ZERO),
        corrected=count("corrected"), corrected_abs_drift=sum((g.abs_drift for g in corrected), ZERO),
        corrected_by_policy=tuple(policies[name] for name in sorted(policies)),
        dismissed=count("dismissed"), needs_review=count("needs_review"), open=count("open"),
        without_task=count("no_task"),
        halted=run.status == "halted" or halted_reason is not None, halted_reason=halted_reason,
        error=run.error, mode=run.mode, mode_reason=run.mode_reason, verified_from=run.verified_from,
        verified_to=run.verified_to,
    )


def build_tie_out_found(outcomes: Sequence[OutcomeGroup]) -> tuple[TieOutLine, ...]:
    """Cached balances and ledger sums of the drifting customers as found, their difference (the net drift),
    what was corrected (per policy) or dismissed, and what remains; each line is an exact Decimal."""
    cached = sum((g.stored_total for g in outcomes), ZERO)
    ledger = sum((g.ledger_total for g in outcomes), ZERO)
    net = cached - ledger
    customers = sum(g.customers for g in outcomes)
    lines = [
        TieOutLine("cached", "Cached balances of the drifting customers (as found)", cached, 0, customers),
        TieOutLine("ledger", "Ledger sums of the same customers (as found)", ledger, 0, customers),
        TieOutLine("net_drift", "Net drift found (cached minus ledger)", net, 0, customers,
                   "equals the sum of the drift column of tasks.csv"),
    ]
    corrected_total = ZERO
    for group in sorted((g for g in outcomes if g.outcome == "corrected"), key=lambda g: g.policy or ""):
        corrected_total += group.net_drift
        note = _POLICY_NOTES.get(group.policy or "", "")
        note = f"{note}; absolute drift {format_money(group.abs_drift)}" if note else ""
        lines.append(TieOutLine(f"corrected_{group.policy or 'unknown'}",
                                f"Corrected, policy {group.policy or 'unknown'}", -group.net_drift, 1,
                                group.customers, note))
    dismissed = [g for g in outcomes if g.outcome == "dismissed"]
    dismissed_total = sum((g.net_drift for g in dismissed), ZERO)
    if dismissed:
        lines.append(TieOutLine("dismissed", "Dismissed after review", -dismissed_total, 1,
                                sum(g.customers for g in dismissed)))
    remaining = net - corrected_total - dismissed_total
    remaining_groups = [g for g in outcomes if g.outcome in ("needs_review", "open", "no_task")]
    lines.append(TieOutLine("remaining", "Remaining net drift", remaining, 0,
                            sum(g.customers for g in remaining_groups)))
    for name, label in (("needs_review", "of which needs review"), ("open", "of which open"),
                        ("no_task", "of which without a task")):
        groups = [g for g in remaining_groups if g.outcome == name]
        if groups:
            lines.append(TieOutLine(f"remaining_{name}", label, sum((g.net_drift for g in groups), ZERO), 2,
                                    sum(g.customers for g in groups)))
    return tuple(lines)


_POLICY_NOTES = {
    "ledger": "cached balance set to the ledger sum",
    "balance": "reconciliation_adjustment entries posted",
}


def build_tie_out_book(book: BookTotals | None) -> tuple[TieOutLine, ...]:
    """All of the scope now: total cached balances, total ledger, their difference, and how much of it is the
    drift of customers with unresolved tasks; the rest is drift within tolerance or arisen since the run."""
    if book is None:
        return ()
    difference = book.cached_total - book.ledger_total
    return (
        TieOutLine("book_cached", "Total cached balances now", book.cached_total, 0, book.customers),
        TieOutLine("book_ledger", "Total of all ledger entries now", book.ledger_total, 0, book.customers),
        TieOutLine("book_difference", "Difference = total net drift now", difference, 0),
        TieOutLine("book_unresolved", "of which customers with unresolved tasks", book.unresolved_net_drift, 1,
                   book.unresolved_customers),
        TieOutLine("book_other", "of which other customers (within tolerance, or drifted since the comparison)",
                   difference - book.unresolved_net_drift, 1),
    )


def build_tie_out_compared(compared: ComparedTotals | None) -> tuple[TieOutLine, ...]:
    """The run's whole scope as compared, from the comparison statements' own totals (no second pass): total
    cached balances, total ledger sums, their difference, and how much of it the run found drifting; the
    rest is the drift within tolerance. Exact: per chunk, the difference IS the sum of every customer's
    drift in that chunk's snapshot. Empty unless every chunk recorded its totals."""
    if compared is None or not compared.complete:
        return ()
    difference = compared.cached_total - compared.ledger_total
    return (
        TieOutLine("compared_cached", "Total cached balances, as compared", compared.cached_total, 0,
                   compared.customers),
        TieOutLine("compared_ledger", "Total of ledger sums, as compared", compared.ledger_total, 0,
                   compared.customers),
        TieOutLine("compared_difference", "Difference = total net drift as compared", difference, 0),
        TieOutLine("compared_found", "of which drifting customers found by the run", compared.found_net_drift, 1,
                   compared.found_customers),
        TieOutLine("compared_within_tolerance", "of which other customers (within tolerance)",
                   difference - compared.found_net_drift, 1),
    )


def age_bucket(opened_at: dt.datetime, now: dt.datetime) -> int:
    """Index into :data:`AGING_LABELS`: 0-1 days is [0, 1), 1-7 is [1, 7), 7-30 is [7, 30), then 30+."""
    age = now - opened_at
    for index, bound in enumerate(AGING_BOUNDS_DAYS):
        if age < dt.timedelta(days=bound):
            return index
    return len(AGING_BOUNDS_DAYS)


def build_aging(unresolved: Sequence[UnresolvedTask], now: dt.datetime) -> tuple[AgingBucket, ...]:
    counts = [0] * len(AGING_LABELS)
    review = [0] * len(AGING_LABELS)
    abs_drift = [ZERO] * len(AGING_LABELS)
    net_drift = [ZERO] * len(AGING_LABELS)
    for task in unresolved:
        index = age_bucket(task.opened_at, now)
        counts[index] += 1
        review[index] += task.status == "needs_review"
        abs_drift[index] += abs(task.drift)
        net_drift[index] += task.drift
    return tuple(AgingBucket(label, counts[i], abs_drift[i], net_drift[i], review[i])
                 for i, label in enumerate(AGING_LABELS))


def build_causes(causes: Sequence[CauseGroup]) -> tuple[CauseLine, ...]:
    total = sum((c.abs_drift for c in causes), ZERO)
    lines = []
    for group in sorted(causes, key=lambda c: (-c.abs_drift, c.cause or "")):
        share = (group.abs_drift * 100 / total).quantize(Decimal("0.1")) if total else Decimal("0.0")
        lines.append(CauseLine(group.cause or "unexplained", cause_label(group.cause), group.customers,
                               group.net_drift, group.abs_drift, share))
    return tuple(lines)


def cause_label(cause: str | None) -> str:
    return CAUSE_LABELS.get(cause, (cause or "").replace("_", " ").capitalize())


def build_warnings(inp: ReportInput, summary: Summary) -> tuple[str, ...]:
    """Disagreements a reader must see: recorded run totals that differ from the staged findings."""
    notes = []
    run = inp.run
    if run.status != "running" and run.drift_count != summary.drifting:
        notes.append(f"The run record counts {run.drift_count} drifting customers but its findings hold "
                     f"{summary.drifting}; the figures below come from the findings.")
    if run.status != "running" and run.total_abs_drift != summary.total_abs_drift:
        notes.append(f"The run record's total absolute drift {format_money(run.total_abs_drift)} differs from "
                     f"its findings' {format_money(summary.total_abs_drift)}; the figures below come from the "
                     f"findings.")
    if run.status == "running":
        notes.append("The run is still running: figures may change until it finishes.")
    return tuple(notes)


def build_report_model(inp: ReportInput) -> ReportModel:
    """The whole report of a run from its fetched rows (pure)."""
    summary = build_summary(inp.run, inp.outcomes)
    return ReportModel(
        summary=summary,
        tie_out_found=build_tie_out_found(inp.outcomes),
        tie_out_book=build_tie_out_book(inp.book),
        tie_out_compared=build_tie_out_compared(inp.compared),
        compared_snapshot=inp.compared.describe_snapshot() if inp.compared is not None else None,
        top_drifts=tuple(inp.top_drifts),
        causes=build_causes(inp.causes),
        aging=build_aging(inp.unresolved, inp.now),
        changes=inp.changes,
        history=tuple(sorted(inp.history, key=lambda h: h.run_id)),
        quality=build_quality(inp.quality, inp.data_docs_href),
        warnings=build_warnings(inp, summary),
        now=inp.now,
        writers=build_writers(inp.writers),
        busy=build_busy(inp.run.outcome.get("busy")),
        audit_head=inp.audit_head,
    )
