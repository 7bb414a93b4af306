"""One reconciliation run end to end: plan -> compare chunks -> quality -> tasks -> corrections -> report.

Invariant: every step keeps all its state in the database and can be retried or rerun with the same result
(steps take and return only ids, bounds and counts): a compared chunk is not compared again, findings are
staged keyed ``(run_id, customer_id)``, tasks are upserted per customer, corrections carry an idempotency key
derived from their task. The CLI runs the steps in one process (:func:`run_reconciliation`); an orchestrator
may run each step as its own task. Nothing here writes a balance or an entry: corrections go through
:mod:`reconciler.balances`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, RowMapping, bindparam, select, text
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.types import BigInteger

from reconciler import change_feed, runs, tasks
from reconciler.chunks import Chunk, fetch_chunks
from reconciler.compare import Drift, compare_chunk
from reconciler.corrections import (
    DEFAULT_POLICY,
    DEFAULT_STATEMENT_TIMEOUT,
    CorrectionResult,
    Decision,
    Guardrails,
    Outcome,
    TaskRef,
    apply_correction,
    check_policy,
    correction_engine,
    decide_correction,
    judge_drift_ratio,
)
from reconciler.errors import (
    CustomerNotFoundError,
    InvalidOperationError,
    ReconcilerError,
    RunFailedError,
    RunStateError,
)
from reconciler.explain import Explanation, explain_drifts
from reconciler.money import ZERO, format_money, to_money
from reconciler.report_model import DriftLine
from reconciler.row_locks import format_lockers
from reconciler.schema import findings, run_chunks

DEFAULT_CHUNK_SIZE = 10_000
DEFAULT_TOLERANCE = Decimal("0.01")
DEFAULT_AUTO_CORRECT_LIMIT = Decimal("100.00")
DEFAULT_MAX_DRIFT_RATIO = Decimal("0.05")
DEFAULT_WORKERS = 2
MAX_WORKERS = 16  # each worker holds a connection; the default engine pool allows 20
MAX_CHUNK_SIZE = 10_000_000
#: Staging writes (findings, chunks, tasks) wait at most this long for a lock; they touch only the
#: reconciler's own tables, never a row a payment needs.
DEFAULT_STEP_LOCK_TIMEOUT = dt.timedelta(seconds=30)
#: Open tasks considered per batch when correcting (memory stays flat whatever the drift count).
CORRECTION_BATCH = 500
#: Tasks are opened and dismissed for at most this many planned customers per transaction.
TASK_SPAN_CUSTOMERS = 100_000
#: Steps heartbeat at most this often.
HEARTBEAT_INTERVAL = dt.timedelta(seconds=5)
_BIGINT_MAX = 9_223_372_036_854_775_807

Progress = Callable[[int, int, int], None]
log = logging.getLogger(__name__)


# ---- options ----------------------------------------------------------------------------------------------

def _integer(value: object, label: str, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidOperationError(f"{label} must be a whole number, got {value!r}")
    try:
        number = int(value.strip()) if isinstance(value, str) else value
    except ValueError:
        raise InvalidOperationError(f"{label} must be a whole number, got {value!r}") from None
    if not low <= number <= high:
        raise InvalidOperationError(f"{label} must be between {low} and {high}, got {number}")
    return number


def _money_at_least_zero(value: object, label: str) -> Decimal:
    money = to_money(value, name=label)
    if money < 0:
        raise InvalidOperationError(f"{label} must be 0 or more, got {money}")
    return money


def _ratio(value: object, label: str) -> Decimal:
    if isinstance(value, bool):
        raise InvalidOperationError(f"{label} must be a number between 0 and 1, got {value!r}")
    try:
        # A ratio is not money: a float from an orchestrator's form is taken at its shortest repr.
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidOperationError(f"{label} must be a number between 0 and 1, got {value!r}") from None
    if not number.is_finite() or not ZERO <= number <= 1:
        raise InvalidOperationError(
            f"{label} must be between 0 and 1 (the share of checked customers that may drift before corrections "
            f"halt; 1 disables the halt), got {value!r}")
    return number


def _flag(value: object, label: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
        return value.strip().lower() in ("true", "yes", "1", "on")
    raise InvalidOperationError(f"{label} must be true or false, got {value!r}")


def _customer_ids(value: object, label: str) -> tuple[int, ...]:
    if isinstance(value, str):
        parts: Sequence[object] = [part for part in value.split(",")]
    elif isinstance(value, list | tuple):
        parts = value
    else:
        raise InvalidOperationError(f"{label} must be a comma-separated list of customer ids like 1,2,3, got {value!r}")
    ids: set[int] = set()
    for part in parts:
        text_part = part.strip() if isinstance(part, str) else part
        if text_part == "":
            raise InvalidOperationError(
                f"{label} has an empty item in {value!r}; write ids separated by single commas, like 1,2,3")
        ids.add(_integer(text_part, f"{label} item", low=-_BIGINT_MAX, high=_BIGINT_MAX))
    if not ids:
        raise InvalidOperationError(f"{label} must list at least one customer id, got {value!r}")
    return tuple(sorted(ids))


def _policy(value: object, label: str) -> str:
    if not isinstance(value, str):
        raise InvalidOperationError(f"{label} must be ledger or balance, got {value!r}")
    return check_policy(value.strip(), name=label)


_PARSERS: dict[str, Callable[[object, str], object]] = {
    "tolerance": _money_at_least_zero,
    "chunk_size": lambda v, label: _integer(v, label, low=1, high=MAX_CHUNK_SIZE),
    "from_id": lambda v, label: _integer(v, label, low=-_BIGINT_MAX, high=_BIGINT_MAX),
    "to_id": lambda v, label: _integer(v, label, low=-_BIGINT_MAX, high=_BIGINT_MAX),
    "customer_ids": _customer_ids,
    "policy": _policy,
    "auto_correct": _flag,
    "auto_correct_limit": _money_at_least_zero,
    "max_drift_ratio": _ratio,
    "dry_run": _flag,
    "workers": lambda v, label: _integer(v, label, low=1, high=MAX_WORKERS),
    "mode": lambda v, label: change_feed.check_mode(v, name=label),
    "full_sweep_days": lambda v, label: _integer(v, label, low=1, high=3650),
}


@dataclass(frozen=True)
class RunOptions:
    """What a run checks and how it may correct. Every value is validated on construction."""

    tolerance: Decimal = DEFAULT_TOLERANCE
    chunk_size: int = DEFAULT_CHUNK_SIZE
    from_id: int | None = None
    to_id: int | None = None
    customer_ids: tuple[int, ...] | None = None
    policy: str = DEFAULT_POLICY
    auto_correct: bool = True
    auto_correct_limit: Decimal = DEFAULT_AUTO_CORRECT_LIMIT
    max_drift_ratio: Decimal = DEFAULT_MAX_DRIFT_RATIO
    dry_run: bool = False
    workers: int = DEFAULT_WORKERS
    #: full (every customer in scope) or incremental (the customers touched since the verified point).
    mode: str = change_feed.DEFAULT_MODE
    #: Scheduled runs: an incremental run is full when the last full sweep is this many days old.
    full_sweep_days: int | None = None

    def __post_init__(self) -> None:
        for key, value in _normalise({f.name: getattr(self, f.name) for f in fields(self)}, {}).items():
            object.__setattr__(self, key, value)

    @classmethod
    def from_params(cls, params: Mapping[str, object], *, labels: Mapping[str, str] | None = None) -> RunOptions:
        """Options from JSON-like params (an orchestrator's Params, a run's stored ``params``); None means the
        default. Raises :class:`InvalidOperationError` / :class:`InvalidAmountError` naming the option (as
        ``labels`` spells it, e.g. ``--tolerance``) and the value."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise InvalidOperationError(
                f"unknown run option(s) {', '.join(map(repr, unknown))}; the options are {', '.join(sorted(names))}")
        given = {key: value for key, value in params.items() if value is not None}
        return cls(**_normalise(given, labels or {}))  # type: ignore[arg-type]

    def to_params(self) -> dict[str, object]:
        """JSON-able (decimals as strings); ``from_params(to_params())`` gives the same options."""
        params: dict[str, object] = asdict(self)
        for key in ("tolerance", "auto_correct_limit", "max_drift_ratio"):
            params[key] = str(params[key])
        params["customer_ids"] = list(self.customer_ids) if self.customer_ids is not None else None
        return params

    @property
    def guardrails(self) -> Guardrails:
        return Guardrails(dry_run=self.dry_run, auto_correct=self.auto_correct,
                          auto_correct_limit=self.auto_correct_limit, max_drift_ratio=self.max_drift_ratio)


def _normalise(values: Mapping[str, object], labels: Mapping[str, str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in values.items():
        if value is None:
            out[key] = None
            continue
        label = labels.get(key, key)
        try:
            out[key] = _PARSERS[key](value, label)
        except ReconcilerError as exc:
            message = str(exc)
            if not message.startswith(label):
                message = f"{label}: {message}"
            raise type(exc)(message) from None
    from_id, to_id = out.get("from_id"), out.get("to_id")
    if isinstance(from_id, int) and isinstance(to_id, int) and from_id > to_id:
        raise InvalidOperationError(
            f"{labels.get('from_id', 'from_id')} {from_id} is greater than {labels.get('to_id', 'to_id')} {to_id}; "
            f"the range is inclusive and must not be empty")
    if out.get("customer_ids") is not None and (from_id is not None or to_id is not None):
        raise InvalidOperationError(
            f"give either {labels.get('customer_ids', 'customer_ids')} or a "
            f"{labels.get('from_id', 'from_id')}/{labels.get('to_id', 'to_id')} range, not both")
    return out


# ---- summary ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunSummary:
    """What a run did, as the CLI and orchestrators report it."""

    run_id: int
    status: str
    customers_checked: int
    drift_count: int
    corrected: int
    needs_review: int
    open: int
    total_abs_drift: Decimal
    halted_reason: str | None
    report_path: str | None
    error: str | None = None
    dry_run: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)
    mode: str | None = None
    mode_reason: str | None = None
    verified_from: str | None = None
    verified_to: str | None = None

    def to_json(self) -> dict[str, object]:
        """JSON-able, decimals as strings."""
        return {
            "mode": self.mode, "mode_reason": self.mode_reason, "verified_from": self.verified_from,
            "verified_to": self.verified_to, "scope": self.scope,
            "run_id": self.run_id, "status": self.status, "customers_checked": self.customers_checked,
            "drift_count": self.drift_count, "corrected": self.corrected, "needs_review": self.needs_review,
            "open": self.open, "total_abs_drift": str(self.total_abs_drift), "halted_reason": self.halted_reason,
            "report_path": self.report_path, "error": self.error, "dry_run": self.dry_run, "busy": self.busy,
        }

    @property
    def scope(self) -> dict[str, Any]:
        """What the run compared: for an incremental run, touched customers and those with unresolved tasks."""
        feed = self.details.get("feed")
        scope: dict[str, Any] = {"customers_checked": self.customers_checked}
        if isinstance(feed, Mapping):
            scope.update({key: feed[key] for key in ("touched", "with_unresolved_tasks") if key in feed})
        return scope

    @property
    def busy(self) -> list[dict[str, Any]]:
        """Customers whose correction was skipped because another session held their row lock (retried by the
        next run): ``customer_id``, ``task_id``, ``lockers`` (pid, application_name, state), ``runs_in_a_row``."""
        listed = self.details.get("busy")
        return [dict(item) for item in listed] if isinstance(listed, list) else []

    @property
    def exit_code(self) -> int:
        """0 clean, 1 unresolved drift remains or a critical expectation failed, 3 failed or halted."""
        if self.status in ("failed", "halted"):
            return 3
        if self.open + self.needs_review > 0:
            return 1
        quality = self.details.get("quality")
        if isinstance(quality, Mapping) and quality.get("success") is False:
            return 1
        return 0


def load_summary(engine: Engine, run_id: int) -> RunSummary:
    """The summary of a run (final figures once finished; live figures while running)."""
    with engine.connect() as conn:
        return _summary(conn, run_id)


def _summary(conn: Connection, run_id: int) -> RunSummary:
    row = runs.get_run(conn, run_id)
    outcome: Mapping[str, Any] = row["outcome"] or {}
    params: Mapping[str, Any] = row["params"] or {}
    if "task_counts" in outcome:
        counts: Mapping[str, int] = outcome["task_counts"]
        totals = runs.Totals(int(row["chunk_count"] or 0), int(row["chunk_count"] or 0),
                             int(row["customers_checked"]), int(row["drift_count"]), Decimal(row["total_abs_drift"]))
    else:
        counts = tasks.status_counts(conn, run_id)
        totals = runs.tally(conn, run_id)
    corrections: Mapping[str, int] = outcome.get("corrections", {})
    return RunSummary(
        run_id=run_id, status=row["status"], customers_checked=totals.customers_checked,
        drift_count=totals.drift_count, corrected=int(corrections.get("corrected", 0)),
        needs_review=int(counts.get("needs_review", 0)), open=int(counts.get("open", 0)),
        total_abs_drift=totals.total_abs_drift, halted_reason=outcome.get("halted_reason"),
        report_path=outcome.get("report_path"), error=row["error"], dry_run=bool(params.get("dry_run", False)),
        details=dict(outcome), mode=row["mode"], mode_reason=row["mode_reason"],
        verified_from=row["verified_from"], verified_to=row["verified_to"],
    )


# ---- steps ------------------------------------------------------------------------------------------------

def _millis(value: dt.timedelta) -> str:
    return str(max(1, int(value.total_seconds() * 1000)))


def _local_timeouts(conn: Connection, *, lock_timeout: dt.timedelta = DEFAULT_STEP_LOCK_TIMEOUT) -> None:
    """Bound this transaction's statements and lock waits (``SET LOCAL``: gone at commit)."""
    conn.execute(text("select set_config('statement_timeout', :st, true), set_config('lock_timeout', :lt, true)"),
                 {"st": _millis(DEFAULT_STATEMENT_TIMEOUT), "lt": _millis(lock_timeout)})


def _options(row: RowMapping) -> RunOptions:
    return RunOptions.from_params(row["params"] or {})


def _check_customers_exist(conn: Connection, options: RunOptions) -> None:
    if options.customer_ids is None:
        return
    missing = conn.execute(
        text("""select id from unnest(cast(:ids as bigint[])) as wanted(id)
                where not exists (select 1 from customers c where c.id = wanted.id) order by id limit 10""")
        .bindparams(bindparam("ids", type_=ARRAY(BigInteger))),
        {"ids": list(options.customer_ids)},
    ).scalars().all()
    if missing:
        raise CustomerNotFoundError(
            f"customer_ids: {', '.join(map(str, missing))} {'does' if len(missing) == 1 else 'do'} not exist in "
            f"customers; check the ids (nothing was run)")


def _begin_run(conn: Connection, options: RunOptions, trigger: str, *, session_lock: bool,
               key: str | None = None) -> int:
    _local_timeouts(conn)
    _check_customers_exist(conn, options)
    run_id = runs.insert_run(conn, options.to_params(), trigger, session_lock=session_lock, key=key)
    abandoned = runs.fail_abandoned_runs(conn, by_run_id=run_id)
    if abandoned:
        runs.merge_outcome(conn, run_id, {"abandoned_runs": [{"run_id": a.run_id, "reason": a.reason}
                                                              for a in abandoned]})
    return run_id


def start_run(engine: Engine, options: RunOptions, trigger: str, *, key: str | None = None) -> int:
    """Insert a ``running`` run with its params and trigger; first marks dead runs ``failed``.

    Unknown ``customer_ids`` raise :class:`CustomerNotFoundError` and nothing is written. A run started
    here (step by step, e.g. by an orchestrator) holds no session lock: it is judged dead by heartbeat age.
    ``key`` (e.g. the orchestrator's run id) makes a retry of this step return the run it already started
    while that run is running; once it has failed, the same key starts a new run.
    """
    with engine.begin() as conn:
        return _begin_run(conn, options, trigger, session_lock=False, key=key)


def heartbeat(engine: Engine, run_id: int) -> None:
    """Record that the run is alive."""
    with engine.begin() as conn:
        runs.heartbeat(conn, run_id)


def mark_run_failed(engine: Engine, run_id: int, reason: str) -> None:
    """Mark a running run ``failed`` with ``reason`` (a no-op when it already finished)."""
    with engine.begin() as conn:
        runs.mark_failed(conn, run_id, reason)


def _chunk_dict(row: Any) -> dict[str, int]:
    return {"run_id": int(row.run_id), "chunk_index": int(row.chunk_index), "first_id": int(row.first_id),
            "last_id": int(row.last_id), "customers": int(row.planned_customers)}


def plan_run(engine: Engine, run_id: int, *, read_engine: Engine | None = None) -> list[dict[str, int]]:
    """Plan the run's chunks (stored in ``run_chunks``); a second call returns the stored plan.

    The run's mode is decided here (:func:`reconciler.change_feed.decide_mode`) and recorded with its reason.
    An incremental run's chunks hold only the customers touched since the verified point (and those with
    unresolved tasks); a run that covers everyone (incremental, or full without a range or ids) takes the
    snapshot it will verify before anything is compared, on ``read_engine`` when comparisons read there."""
    with engine.begin() as conn:
        _local_timeouts(conn)
        runs.require_running(conn, run_id)
        row = runs.get_run(conn, run_id, for_update=True)  # one planner at a time
        stored = conn.execute(select(run_chunks).where(run_chunks.c.run_id == run_id)
                              .order_by(run_chunks.c.chunk_index)).all()
        if stored:
            return [_chunk_dict(r) for r in stored]
        options = _options(row)
        planned, chunk_ids = _plan_scope(conn, read_engine or engine, run_id, options)
        if planned:
            conn.execute(insert(run_chunks), [
                {"run_id": run_id, "chunk_index": c.index, "first_id": c.first_id, "last_id": c.last_id,
                 "planned_customers": c.customers, "status": "planned",
                 "customer_ids": list(chunk_ids[c.index]) if chunk_ids is not None else None} for c in planned])
        runs.store_totals(conn, run_id, runs.Totals(len(planned), 0, 0, 0, ZERO))
        return [{"run_id": run_id, "chunk_index": c.index, "first_id": c.first_id, "last_id": c.last_id,
                 "customers": c.customers} for c in planned]


def _plan_scope(conn: Connection, read_engine: Engine, run_id: int,
                options: RunOptions) -> tuple[list[Chunk], list[tuple[int, ...]] | None]:
    """Decide the mode, record it, and plan the chunks; incremental chunks come with their customer ids."""
    restricted = options.customer_ids is not None or options.from_id is not None or options.to_id is not None
    state = change_feed.read_state(conn)
    decision = change_feed.decide_mode(options.mode, state, full_sweep_days=options.full_sweep_days,
                                       restricted=restricted)
    with read_engine.connect() as reader:
        reader = reader.execution_options(isolation_level="REPEATABLE READ")
        with reader.begin():
            if decision.mode == "incremental":
                assert state.point is not None
                scope = change_feed.read_scope(reader, state.point)
                snapshot = scope.snapshot
                if scope.truncated:
                    decision = change_feed.ModeDecision(
                        "full", "incremental requested, ran full: a TRUNCATE since the last verified point")
            else:
                snapshot = change_feed.take_snapshot(reader)
    # Only a run over everyone, with the feed complete, may verify its snapshot (see finish_run).
    feed: dict[str, object] = {"snapshot": None if restricted or not state.complete else snapshot,
                               "trigger_oids": list(state.trigger_oids)}
    if decision.mode == "incremental":
        groups = change_feed.split_ids(scope.customer_ids, options.chunk_size)
        feed.update(touched=scope.touched, with_unresolved_tasks=scope.with_tasks)
        planned = [Chunk(index=i, first_id=g[0], last_id=g[-1], customers=len(g)) for i, g in enumerate(groups)]
        chunk_ids: list[tuple[int, ...]] | None = groups
    else:
        planned = fetch_chunks(conn, options.chunk_size, from_id=options.from_id, to_id=options.to_id,
                               customer_ids=options.customer_ids)
        chunk_ids = None
    runs.record_mode(conn, run_id, decision.mode, decision.reason,
                     verified_from=state.point if decision.mode == "incremental" else None)
    runs.merge_outcome(conn, run_id, {"feed": feed})
    return planned, chunk_ids


def _find_drifts(conn: Connection, chunk: Chunk, options: RunOptions,
                 customer_ids: Sequence[int] | None = None) -> tuple[list[Drift], dict[int, Explanation]]:
    drifts = compare_chunk(conn, chunk, options.tolerance,
                           customer_ids=customer_ids if customer_ids is not None else options.customer_ids)
    return drifts, (explain_drifts(conn, drifts) if drifts else {})


def _compare(engine: Engine, run_id: int, chunk_index: int, options: RunOptions,
             read_engine: Engine | None = None) -> dict[str, int]:
    with engine.begin() as conn:
        _local_timeouts(conn)
        runs.require_running(conn, run_id)
        row = conn.execute(select(run_chunks).where(run_chunks.c.run_id == run_id,
                                                    run_chunks.c.chunk_index == chunk_index)
                           .with_for_update()).one_or_none()
        if row is None:
            raise RunStateError(f"run {run_id} has no chunk {chunk_index}; plan the run first (plan_run)")
        if row.status == "compared":
            return {"chunk_index": chunk_index, "customers_checked": int(row.customers_checked),
                    "drift_count": int(row.drift_count)}
        chunk = Chunk(index=chunk_index, first_id=int(row.first_id), last_id=int(row.last_id),
                      customers=int(row.planned_customers))
        ids = list(row.customer_ids) if row.customer_ids is not None else None  # an incremental chunk
        if read_engine is None:
            drifts, explanations = _find_drifts(conn, chunk, options, ids)
        else:
            # A replica may lag: that can delay a finding, never cause a wrong write, because every correction
            # re-verifies on the primary under the row lock. One snapshot for compare and explain.
            with read_engine.connect() as replica:
                replica = replica.execution_options(isolation_level="REPEATABLE READ")
                with replica.begin():
                    _local_timeouts(replica)
                    drifts, explanations = _find_drifts(replica, chunk, options, ids)
        if drifts:
            staged = []
            for drift in drifts:
                explanation = explanations.get(drift.customer_id)
                evidence: dict[str, object] | None = None
                if explanation is not None:
                    evidence = {**dict(explanation.evidence), "summary": explanation.summary}
                staged.append({"run_id": run_id, "customer_id": drift.customer_id, "chunk_index": chunk_index,
                               "stored_balance": drift.stored_balance, "ledger_sum": drift.ledger_sum,
                               "drift": drift.drift, "cause": explanation.cause if explanation else None,
                               "evidence": evidence})
            statement = insert(findings)
            conn.execute(statement.on_conflict_do_update(
                index_elements=[findings.c.run_id, findings.c.customer_id],
                set_={name: statement.excluded[name] for name in
                      ("chunk_index", "stored_balance", "ledger_sum", "drift", "cause", "evidence", "found_at")},
            ), staged)
        conn.execute(run_chunks.update()
                     .where(run_chunks.c.run_id == run_id, run_chunks.c.chunk_index == chunk_index)
                     .values(status="compared", customers_checked=chunk.customers, drift_count=len(drifts),
                             compared_at=text("now()")))
        return {"chunk_index": chunk_index, "customers_checked": chunk.customers, "drift_count": len(drifts)}


def compare_run_chunk(engine: Engine, run_id: int, chunk_index: int, *,
                      read_engine: Engine | None = None) -> dict[str, int]:
    """Compare one planned chunk (one SQL statement), explain its drifts and stage them as findings; a
    chunk already compared is returned as stored (a retry changes nothing). With ``read_engine`` (a read
    replica) the comparison reads there; the findings are staged on ``engine``, the primary."""
    with engine.connect() as conn:
        options = _options(runs.get_run(conn, run_id))
    result = _compare(engine, run_id, chunk_index, options, read_engine)
    with engine.begin() as conn:
        runs.heartbeat(conn, run_id, min_interval=HEARTBEAT_INTERVAL)
    return result


def check_quality(engine: Engine, run_id: int) -> dict[str, object]:
    """Run the expectation suites on the run (:func:`reconciler.quality.check_run_quality`); the outcome is
    recorded on the run and returned."""
    from reconciler.quality import check_run_quality  # noqa: PLC0415  (Great Expectations is heavy)

    with engine.connect() as conn:
        runs.require_running(conn, run_id)
    result = check_run_quality(engine, run_id)
    docs = getattr(result, "data_docs_path", None)
    quality: dict[str, object] = {"evaluated": int(result.evaluated), "failed": int(result.failed),
                                  "warnings": int(getattr(result, "warnings", 0)),
                                  "success": bool(result.success), "data_docs_path": str(docs) if docs else None}
    with engine.begin() as conn:
        runs.merge_outcome(conn, run_id, {"quality": quality})
        runs.heartbeat(conn, run_id)
    return quality


def _compared_chunks(conn: Connection, run_id: int) -> Iterator[Any]:
    yield from conn.execute(select(run_chunks).where(run_chunks.c.run_id == run_id,
                                                     run_chunks.c.status == "compared")
                            .order_by(run_chunks.c.chunk_index)).all()


@dataclass(frozen=True)
class Span:
    """Consecutive compared chunks handled in one task transaction; ``compared_at`` is the earliest."""

    first_id: int
    last_id: int
    compared_at: dt.datetime
    #: An incremental run's spans hold only the customers their chunks compared.
    customer_ids: tuple[int, ...] | None = None


def _span(rows: Sequence[Any]) -> Span:
    ids = None
    if any(getattr(r, "customer_ids", None) is not None for r in rows):
        ids = tuple(sorted({int(i) for r in rows for i in (getattr(r, "customer_ids", None) or ())}))
    return Span(int(rows[0].first_id), int(rows[-1].last_id), min(r.compared_at for r in rows), ids)


def group_spans(chunk_rows: Sequence[Any], max_customers: int = TASK_SPAN_CUSTOMERS) -> list[Span]:
    """Group compared chunks (in index order) into spans of consecutive chunks of at most ``max_customers``
    planned customers (pure). A chunk not compared breaks a span, so its customers are never judged clean."""
    spans: list[Span] = []
    current: list[Any] = []
    for row in chunk_rows:
        if current and (row.chunk_index != current[-1].chunk_index + 1
                        or sum(int(r.planned_customers) for r in current) + int(row.planned_customers) > max_customers):
            spans.append(_span(current))
            current = []
        current.append(row)
    if current:
        spans.append(_span(current))
    return spans


def open_run_tasks(engine: Engine, run_id: int) -> dict[str, int]:
    """Open (or refresh) one task per drifting customer from the staged findings, chunk by chunk, and dismiss
    the unresolved tasks of customers the run found clean (re-verified clean now). A rerun opens nothing new."""
    with engine.connect() as conn:
        run = runs.require_running(conn, run_id)
        options = _options(run)
        chunk_rows = list(_compared_chunks(conn, run_id))
    for span in group_spans(chunk_rows):
        with engine.begin() as conn:
            _local_timeouts(conn)
            runs.require_running(conn, run_id)
            tasks.open_tasks_from_findings(conn, run_id, span.first_id, span.last_id)
            tasks.dismiss_vanished(conn, run_id, span.first_id, span.last_id, compared_at=span.compared_at,
                                   tolerance=options.tolerance,
                                   customer_ids=span.customer_ids if span.customer_ids is not None
                                   else options.customer_ids)
            runs.heartbeat(conn, run_id, min_interval=HEARTBEAT_INTERVAL)
    with engine.begin() as conn:
        row = conn.execute(text("""
            select count(*) filter (where t.run_id = :run) as opened,
                   count(*) filter (where t.run_id is distinct from :run
                                    and exists (select 1 from reconciler.findings f
                                                where f.run_id = :run and f.customer_id = t.customer_id)) as updated,
                   count(*) filter (where t.status = 'dismissed'
                                    and not exists (select 1 from reconciler.findings f
                                                    where f.run_id = :run and f.customer_id = t.customer_id))
                       as dismissed
            from reconciler.tasks t where t.last_seen_run_id = :run"""), {"run": run_id}).one()
        counts = {"opened": int(row.opened), "updated": int(row.updated), "dismissed": int(row.dismissed)}
        runs.store_totals(conn, run_id, runs.tally(conn, run_id))
        runs.merge_outcome(conn, run_id, {"tasks": counts})
    return counts


_CURRENT_DRIFTS = text("""
    select c.id, c.balance - coalesce((select sum(e.amount) from customer_ledger_entries e
                                       where e.customer_id = c.id), 0) as drift
    from customers c where c.id = any(cast(:ids as bigint[]))""").bindparams(bindparam("ids", type_=ARRAY(BigInteger)))


def _current_drifts(engine: Engine, customer_ids: Sequence[int]) -> dict[int, Decimal]:
    """The customers' drifts now, read in ONE statement (one snapshot: never half of a concurrent write)."""
    with engine.connect() as conn:
        rows = conn.execute(_CURRENT_DRIFTS, {"ids": list(customer_ids)}).all()
    return {int(row.id): Decimal(row.drift) for row in rows}


def _needs_core(candidate: tasks.Candidate, options: RunOptions) -> bool:
    """Whether the task may need a correction (checked again on its current drift), or only a decision."""
    if candidate.pending_policy is not None:
        return not options.dry_run
    return decide_correction(candidate.drift, options.guardrails).decision is Decision.CORRECT


def _decide(candidate: tasks.Candidate, drift: Decimal, options: RunOptions, counts: Counter[str],
            reviews: list[tuple[int, Decimal, str]]) -> str | None:
    """Count a task that needs no correction (queueing it for review); return the reason when it must be
    corrected."""
    verdict = decide_correction(drift, options.guardrails)
    if verdict.decision is Decision.CORRECT:
        return verdict.reason
    if verdict.decision is Decision.NEEDS_REVIEW:
        counts["needs_review"] += 1
        if candidate.status == "open":
            reviews.append((candidate.task_id, drift, verdict.reason))
    elif candidate.pending_policy is not None:
        counts["pending_left"] += 1
    else:
        counts["would_correct" if verdict.decision is Decision.DRY_RUN else "left_open"] += 1
    return None


def _process_batch(engine: Engine, run_id: int, options: RunOptions, batch: Sequence[tasks.Candidate],
                   correct: Callable[[TaskRef, str], CorrectionResult], busy: list[CorrectionResult]) -> Counter[str]:
    """Decide and act on one batch of unresolved tasks; the corrections skipped as busy are added to ``busy``.

    Bookkeeping is batched (one transaction to send tasks to review and mark corrections in flight, one to
    record the outcomes); each correction itself is one core transaction under the customer's row lock. A
    crash between the two leaves the tasks marked in flight, and the next run replays them with the same key.
    """
    by = f"run {run_id}"
    counts: Counter[str] = Counter()
    reviews: list[tuple[int, Decimal, str]] = []
    planned: list[tuple[tasks.Candidate, str, str]] = []  # (task, policy, note)
    maybe = {c.task_id for c in batch if _needs_core(c, options)}
    now = _current_drifts(engine, [c.customer_id for c in batch if c.task_id in maybe]) if maybe else {}
    for candidate in batch:
        if candidate.task_id in maybe and candidate.pending_policy is not None:
            # Replay a correction an earlier run left in flight: same key and policy, so the core returns the
            # first result, or corrects under the lock if it never ran.
            planned.append((candidate, candidate.pending_policy,
                            f"correction left in flight, completed by run {run_id}"))
            continue
        # Decide on the drift as it stands now (the core re-verifies once more under the row lock).
        drift = now.get(candidate.customer_id, candidate.drift) if candidate.task_id in maybe else candidate.drift
        reason = _decide(candidate, drift, options, counts, reviews)
        if reason is not None:
            planned.append((candidate, options.policy, f"auto-corrected by run {run_id} ({reason})"))
    with engine.begin() as conn:
        _local_timeouts(conn)
        tasks.mark_many_needs_review(conn, reviews, by=by, run_id=run_id)
        marked = tasks.mark_many_pending(conn, [(c.task_id, policy) for c, policy, _ in planned], by=by,
                                         run_id=run_id)
    counts["already_resolved"] += len(planned) - len(marked)
    planned = [item for item in planned if item[0].task_id in marked]
    results = [correct(TaskRef(c.task_id, c.customer_id, run_id), policy) for c, policy, _ in planned] \
        if len(planned) <= 1 else _parallel(correct, planned, run_id, options.workers)
    with engine.begin() as conn:
        _local_timeouts(conn)
        for (_, _, note), result in zip(planned, results, strict=True):
            tasks.record_correction(conn, result, by=by, note=note)
            counts[_OUTCOME_COUNTER[result.outcome]] += 1
            if result.outcome is Outcome.BUSY:
                busy.append(result)
    return counts


def _parallel(correct: Callable[[TaskRef, str], CorrectionResult], planned: Sequence[tuple[tasks.Candidate, str, str]],
              run_id: int, workers: int) -> list[CorrectionResult]:
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="correct") as pool:
        return list(pool.map(lambda item: correct(TaskRef(item[0].task_id, item[0].customer_id, run_id), item[1]),
                             planned))


_OUTCOME_COUNTER = {Outcome.CORRECTED: "corrected", Outcome.VANISHED: "vanished", Outcome.DEFERRED: "deferred",
                    Outcome.BUSY: "busy"}
#: At most this many busy customers are listed on a run (all are counted).
MAX_BUSY_LISTED = 1_000


def _busy_entries(engine: Engine, busy: Sequence[CorrectionResult]) -> list[dict[str, object]]:
    """The busy customers as a run lists them: customer, task, who holds the lock, runs in a row busy."""
    listed = sorted(busy, key=lambda result: result.task.customer_id)[:MAX_BUSY_LISTED]
    with engine.connect() as conn:
        streaks = tasks.busy_streaks(conn, [result.task.task_id for result in listed])
    return [{"customer_id": result.task.customer_id, "task_id": result.task.task_id,
             "lockers": [locker.to_json() for locker in result.lockers],
             "runs_in_a_row": streaks.get(result.task.task_id, 1)} for result in listed]


def apply_run_corrections(engine: Engine, run_id: int) -> dict[str, object]:
    """Apply the guardrails and correct the run's unresolved tasks through the balance core.

    Halt check first: when too many customers drift (``max_drift_ratio``), nothing is corrected and the run
    will finish ``halted``. Otherwise each unresolved task the run saw is sent to review (beyond
    ``auto_correct_limit``), left as it is (dry run, auto-correct off) or corrected, re-verified under the
    row lock; the guardrails are those of THIS run, so a needs_review task is corrected by a run whose limit
    covers it. A transient lock timeout leaves the task open for the next run. Applying this step twice
    corrects nothing twice. Tasks are handled in batches (memory stays flat whatever the drift count).
    """
    from reconciler.balances import BalanceManager  # noqa: PLC0415  (the core; imported where it is used)

    with engine.begin() as conn:
        _local_timeouts(conn)
        run = runs.require_running(conn, run_id)
        options = _options(run)
        totals = runs.tally(conn, run_id)
        runs.store_totals(conn, run_id, totals)
    halted_reason = judge_drift_ratio(totals.drift_count, totals.customers_checked, options.max_drift_ratio)
    counts: Counter[str] = Counter()
    busy: list[CorrectionResult] = []
    if halted_reason is None:
        local = threading.local()
        with correction_engine(engine, pool_size=options.workers) as safe_engine:

            def correct(task: TaskRef, policy: str) -> CorrectionResult:
                if not hasattr(local, "manager"):
                    local.manager = BalanceManager(safe_engine)
                return apply_correction(local.manager, task, policy=policy, tolerance=options.tolerance,
                                        audit={"by": f"run {run_id}"})

            after = 0
            while True:
                with engine.connect() as conn:
                    runs.require_running(conn, run_id)  # a run found dead meanwhile corrects nothing more
                    batch = tasks.correction_candidates(conn, run_id, after_id=after, limit=CORRECTION_BATCH)
                if not batch:
                    break
                after = batch[-1].task_id
                counts.update(_process_batch(engine, run_id, options, batch, correct, busy))
                with engine.begin() as conn:
                    runs.heartbeat(conn, run_id, min_interval=HEARTBEAT_INTERVAL)
    result: dict[str, object] = {"halted_reason": halted_reason, **{key: counts.get(key, 0) for key in (
        "corrected", "vanished", "deferred", "busy", "needs_review", "would_correct", "left_open", "pending_left",
        "already_resolved")}}
    busy_listed = _busy_entries(engine, busy)
    with engine.begin() as conn:
        patch: dict[str, object] = {"corrections": {k: v for k, v in result.items() if k != "halted_reason"},
                                    "busy": busy_listed}
        if halted_reason is not None:
            patch["halted_reason"] = halted_reason
        runs.merge_outcome(conn, run_id, patch)
        runs.heartbeat(conn, run_id)
    return result


def build_report(engine: Engine, run_id: int, out_dir: Path | None = None) -> str:
    """Build the finance report (:func:`reconciler.report.build_run_report`); return its folder."""
    from reconciler.report import build_run_report  # noqa: PLC0415  (plots and templates are heavy)

    with engine.begin() as conn:
        runs.store_totals(conn, run_id, runs.tally(conn, run_id))
    path = build_run_report(engine, run_id, out_dir)
    with engine.begin() as conn:
        runs.merge_outcome(conn, run_id, {"report_path": str(path)})
        runs.heartbeat(conn, run_id)
    return str(path)


def finish_run(engine: Engine, run_id: int) -> RunSummary:
    """Close the run: ``halted`` when corrections were halted, else ``succeeded``, with its totals and the
    status of its tasks at this moment. A finished run is returned as it is (a retry changes nothing)."""
    with engine.begin() as conn:
        _local_timeouts(conn)
        row = runs.get_run(conn, run_id, for_update=True)
        if row["status"] in ("succeeded", "halted"):
            return _summary(conn, run_id)
        if row["status"] != "running":
            raise RunStateError(f"run {run_id} is {row['status']} ({row['error']}); it cannot be finished")
        totals = runs.tally(conn, run_id)
        if totals.compared_chunks < totals.chunks:
            raise RunStateError(
                f"run {run_id} has {totals.chunks - totals.compared_chunks} of {totals.chunks} chunks not compared; "
                f"compare them (compare_run_chunk) before finishing")
        outcome: Mapping[str, Any] = row["outcome"] or {}
        status = "halted" if outcome.get("halted_reason") else "succeeded"
        runs.merge_outcome(conn, run_id, {"task_counts": tasks.status_counts(conn, run_id)})
        runs.finish(conn, run_id, status, totals)
        feed: Mapping[str, Any] = outcome.get("feed") or {}
        snapshot = feed.get("snapshot")
        now = change_feed.read_state(conn)
        # The run compared everyone it had to up to its snapshot, and the same feed triggers were there all
        # along (a feed reinstalled meanwhile may have missed writes): that snapshot is now verified.
        if snapshot and now.complete and list(now.trigger_oids) == list(feed.get("trigger_oids") or []):
            change_feed.advance(conn, snapshot, run_id)
            runs.record_verified(conn, run_id, snapshot)
        return _summary(conn, run_id)


# ---- in one process ---------------------------------------------------------------------------------------

def _compare_all(engine: Engine, run_id: int, plan: Sequence[Mapping[str, int]], options: RunOptions,
                 progress: Progress | None, beat: Callable[[], None]) -> None:
    total = len(plan)
    done = checked = 0
    if progress is not None:
        progress(0, total, 0)
    pending: set[Future[dict[str, int]]] = set()
    queue = iter(plan)
    window = options.workers * 4
    with ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="compare") as pool:
        try:
            while True:
                while len(pending) < window:
                    item = next(queue, None)
                    if item is None:
                        break
                    pending.add(pool.submit(_compare, engine, run_id, item["chunk_index"], options))
                if not pending:
                    break
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    result = future.result()
                    done += 1
                    checked += result["customers_checked"]
                    if progress is not None:
                        progress(done, total, checked)
                beat()
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def run_reconciliation(engine: Engine, options: RunOptions, *, trigger: str = "cli",
                       progress: Progress | None = None, report_dir: Path | None = None) -> RunSummary:
    """Run every step in this process, chunks compared in parallel on ``options.workers`` connections.

    The run holds a session advisory lock for its whole life, so if this process dies the next run marks it
    ``failed`` at once. Bad options or unknown ``customer_ids`` raise before anything is written; an error
    after the start marks the run ``failed`` (with the reason) and raises :class:`RunFailedError`.
    ``progress(done_chunks, total_chunks, customers_checked)`` is called as chunks complete.
    """
    runs.check_trigger(trigger)
    with engine.connect() as lock_conn:
        try:
            with lock_conn.begin():
                run_id = _begin_run(lock_conn, options, trigger, session_lock=True)
        except BaseException:
            # The insert rolled back; a session lock taken before the failure must not outlive it.
            with lock_conn.begin():
                lock_conn.execute(text("select pg_advisory_unlock_all()"))
            raise
        try:
            def beat() -> None:
                with lock_conn.begin():
                    runs.heartbeat(lock_conn, run_id, min_interval=HEARTBEAT_INTERVAL)

            try:
                from reconciler.quality import preload_great_expectations  # noqa: PLC0415  (light module)

                preload_great_expectations()  # the 2.5 s import overlaps with comparing the chunks
                plan = plan_run(engine, run_id)
                _compare_all(engine, run_id, plan, options, progress, beat)
                beat()
                check_quality(engine, run_id)
                open_run_tasks(engine, run_id)
                apply_run_corrections(engine, run_id)
                finish_run(engine, run_id)
                # After finishing, so the filed report shows the run's final status, not "running".
                build_report(engine, run_id, report_dir)
                return load_summary(engine, run_id)
            except Exception as exc:
                reason = describe_error(exc)
                _record_failure(engine, run_id, reason)
                raise RunFailedError(f"run {run_id} failed: {reason}", run_id) from exc
            except BaseException:
                _record_failure(engine, run_id, "interrupted; a new run redoes the work without duplicates")
                raise
        finally:
            try:
                if lock_conn.in_transaction():
                    lock_conn.rollback()
                with lock_conn.begin():
                    runs.release_lock(lock_conn, run_id)
            except Exception:  # the session is unusable: closing it releases the lock anyway
                log.warning("could not release the session lock of run %s; closing its connection", run_id)
                lock_conn.invalidate()


def describe_error(exc: BaseException) -> str:
    """One line naming an error: the database's own message for database errors (no SQL text)."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__


def _record_failure(engine: Engine, run_id: int, reason: str) -> None:
    try:
        mark_run_failed(engine, run_id, reason)
    except Exception:  # the database may be what failed; the next run's start marks this run failed then
        log.exception("could not mark run %s failed (%s); the next run will", run_id, reason)


# ---- reading for people -----------------------------------------------------------------------------------

def top_drifts(engine: Engine, run_id: int, limit: int = 10) -> list[DriftLine]:
    """The run's largest drifts (by absolute value) with their explanations and task status."""
    with engine.connect() as conn:
        rows = conn.execute(text("""
            select f.customer_id, f.stored_balance, f.ledger_sum, f.drift, f.cause, f.evidence ->> 'summary' as summary,
                   t.id as task_id, t.status as task_status
            from reconciler.findings f
            left join lateral (select id, status from reconciler.tasks t where t.customer_id = f.customer_id
                               order by t.id desc limit 1) t on true
            where f.run_id = :run order by abs(f.drift) desc, f.customer_id limit :limit"""),
                            {"run": run_id, "limit": limit}).all()
    return [DriftLine(int(r.customer_id), Decimal(r.stored_balance), Decimal(r.ledger_sum), Decimal(r.drift),
                           r.cause, r.summary, r.task_id, r.task_status) for r in rows]


def describe_busy(item: Mapping[str, Any]) -> str:
    """One line for a busy customer: who holds its lock and for how many runs in a row."""
    streak = int(item.get("runs_in_a_row") or 1)
    return (f"customer {item.get('customer_id')} (task {item.get('task_id')}) was locked by "
            f"{format_lockers(item.get('lockers') or [])}; correction skipped, retried next run"
            + (f" (busy {streak} runs in a row)" if streak > 1 else ""))


def describe_summary(summary: RunSummary) -> str:
    """One line for logs."""
    return (f"run {summary.run_id} {summary.status}: {summary.customers_checked} customers checked, "
            f"{summary.drift_count} drifting (total {format_money(summary.total_abs_drift)}), {summary.corrected} "
            f"corrected, {summary.needs_review} need review, {summary.open} open")


__all__ = [
    "DEFAULT_AUTO_CORRECT_LIMIT", "DEFAULT_CHUNK_SIZE", "DEFAULT_MAX_DRIFT_RATIO", "DEFAULT_TOLERANCE",
    "DEFAULT_WORKERS", "RunOptions", "RunSummary", "apply_run_corrections", "build_report",
    "check_quality", "compare_run_chunk", "finish_run", "heartbeat", "load_summary", "mark_run_failed",
    "open_run_tasks", "plan_run", "run_reconciliation", "start_run",
]
