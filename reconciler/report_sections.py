"""The report's side sections as plain values (pure): data quality, writers around the core, customers a
run found busy, and the audit chain's head. :mod:`reconciler.report_model` derives the tie-out and puts these
beside it; nothing here touches the run's money lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from reconciler.corrections import BUSY_RUNS_CALLOUT
from reconciler.money import ZERO
from reconciler.row_locks import format_lockers
from reconciler.writers import Writer


@dataclass(frozen=True)
class QualityLine:
    """One expectation result stored in ``reconciler.quality_results``."""

    suite: str
    expectation: str
    success: bool
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WritersFacts:
    """The census of writers around the core over the run's window, and the guard's mode when reported."""

    window: str
    guard_mode: str
    lines: tuple[Writer, ...] = ()


@dataclass(frozen=True)
class AuditAnchor:
    """The audit chain's head when the report was read (``reconciler audit verify`` prints the same pair), so
    two copies of a report can be compared with the database later."""

    length: int
    hash: str


@dataclass(frozen=True)
class QualityView:
    evaluated: int
    failed: int
    warnings: int
    lines: tuple[QualityLine, ...]
    data_docs_href: str | None

    @property
    def success(self) -> bool:
        return self.failed == 0


@dataclass(frozen=True)
class WritersView:
    """The section "Writers around the core": the census with its totals (largest absolute amount first)."""

    window: str
    guard_mode: str
    lines: tuple[Writer, ...]
    writes: int
    net_amount: Decimal
    abs_amount: Decimal
    broke_ledger: int


@dataclass(frozen=True)
class BusyLine:
    """A customer whose correction was skipped because another session held its row lock."""

    customer_id: int
    task_id: int | None
    lockers: str
    runs_in_a_row: int
    called_out: bool  # busy for BUSY_RUNS_CALLOUT runs in a row or more


def severity(line: QualityLine) -> str:
    value = line.details.get("severity")
    return value if isinstance(value, str) and value else "critical"


def observed(line: QualityLine) -> int | None:
    value = line.details.get("observed")
    return value if isinstance(value, int) else None


def build_quality(lines: Sequence[QualityLine], data_docs_href: str | None) -> QualityView:
    failed = [q for q in lines if not q.success]
    warnings = sum(1 for q in failed if severity(q) != "critical")
    ordered = tuple(sorted(lines, key=lambda q: (q.success, q.suite, q.expectation)))
    return QualityView(len(lines), len(failed) - warnings, warnings, ordered, data_docs_href)


def build_writers(facts: WritersFacts | None) -> WritersView | None:
    """The census section, largest absolute amount first, with exact totals (pure)."""
    if facts is None:
        return None
    lines = tuple(sorted(facts.lines, key=lambda w: (-w.abs_amount, -w.writes, w.application_name, w.role,
                                                     w.fingerprint or "")))
    return WritersView(facts.window, facts.guard_mode, lines, sum(w.writes for w in lines),
                       sum((w.net_amount for w in lines), ZERO), sum((w.abs_amount for w in lines), ZERO),
                       sum(w.broke_ledger for w in lines))


def build_busy(listed: object) -> tuple[BusyLine, ...]:
    """The run's busy customers (its outcome's ``busy`` list), longest-busy first (pure)."""
    lines = []
    for item in listed if isinstance(listed, list) else []:
        held = format_lockers(item.get("lockers") or [])
        streak = int(item.get("runs_in_a_row") or 1)
        task_id = item.get("task_id")
        lines.append(BusyLine(int(item["customer_id"]), int(task_id) if task_id is not None else None, held, streak,
                              streak >= BUSY_RUNS_CALLOUT))
    return tuple(sorted(lines, key=lambda line: (-line.runs_in_a_row, line.customer_id)))
