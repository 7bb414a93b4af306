"""Finance report of a run: one self-contained HTML file, ``tasks.csv`` and ``summary.json``.

Invariant: every figure is read from PostgreSQL in ONE repeatable-read snapshot (sums in ``numeric``,
never float), so the page, the CSV and the JSON agree with each other and with the database at that
moment; the numbers are shaped by the pure :mod:`reconciler.report_model`. The HTML needs no network:
CSS is inline and charts are inline SVG (hand-written, :mod:`reconciler.report_charts`).
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import json
import shutil
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import BigInteger

from reconciler import report_store
from reconciler.audit import read_head
from reconciler.errors import RunNotFoundError
from reconciler.money import ZERO, format_money
from reconciler.report_charts import line_chart
from reconciler.report_model import (
    DEFAULT_TOP_DRIFTS,
    DEFAULT_TREND_RUNS,
    AuditAnchor,
    BookTotals,
    CauseGroup,
    ChangeCounts,
    ComparedTotals,
    DriftLine,
    HistoryPoint,
    OutcomeGroup,
    QualityLine,
    ReportInput,
    ReportModel,
    RunFacts,
    UnresolvedTask,
    WritersFacts,
    build_report_model,
    cause_label,
    observed,
    severity,
)
from reconciler.schema import quality_results, runs

HTML_NAME = "report.html"
CSV_NAME = "tasks.csv"
JSON_NAME = "summary.json"
DATA_DOCS_DIR = "data_docs"
CSV_COLUMNS = ("customer_id", "stored_balance", "ledger_sum", "drift", "abs_drift", "cause", "explanation",
               "task_id", "task_status", "policy", "opened_at", "resolved_at")


def build_run_report(engine: Engine, run_id: int, out_dir: Path | None = None, *,
                     now: dt.datetime | None = None, top: int = DEFAULT_TOP_DRIFTS,
                     trend_runs: int = DEFAULT_TREND_RUNS, book_now: bool = False) -> Path | str:
    """Write ``report.html``, ``tasks.csv`` and ``summary.json`` for ``run_id`` into ``out_dir``, or by default
    into the run's folder in the report store (``RECONCILER_REPORTS_URL``, a local folder unless set), and
    return that folder (a ``Path`` when local, the URL otherwise). Raises :class:`RunNotFoundError` for an
    unknown run. The scope's tie-out comes from the run's own comparison snapshots; ``book_now`` adds the
    scope as it stands now (a second pass over the ledger)."""
    if out_dir is not None:
        target = Path(out_dir)
        target.mkdir(parents=True, exist_ok=True)
        _write_report(engine, run_id, target, None, now=now, top=top, trend_runs=trend_runs,
                      book_now=book_now)
        return target
    location = report_store.run_location(run_id)
    with report_store.staged(location) as target:
        _write_report(engine, run_id, target, location, now=now, top=top, trend_runs=trend_runs,
                      book_now=book_now)
    return target if report_store.is_local(location) else location


def _write_report(engine: Engine, run_id: int, target: Path, location: str | None, *, now: dt.datetime | None,
                  top: int, trend_runs: int, book_now: bool = False) -> None:
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
        conn.execute(text("set transaction read only"))
        moment = now or conn.execute(text("select now()")).scalar_one()
        docs = _data_docs_href(conn, run_id, target, location)
        inp = fetch_report_input(conn, run_id, moment, top=top, trend_runs=trend_runs, data_docs_href=docs,
                                 book_now=book_now)
        write_tasks_csv(conn, run_id, target / CSV_NAME)
    model = build_report_model(inp)
    (target / JSON_NAME).write_text(json.dumps(model.to_json(), indent=2) + "\n")
    (target / HTML_NAME).write_text(render_html(model), encoding="utf-8")


def report_html_path(folder: Path | str) -> Path | str:
    """The report page in a folder (a local path) or in the report store (a URL)."""
    return folder / HTML_NAME if isinstance(folder, Path) else f"{folder.rstrip('/')}/{HTML_NAME}"


# ---- reading (one snapshot) ----------------------------------------------------------------------------------

#: Where fetch_run puts an incremental run's compared customers among its params (never a run option).
INCREMENTAL_IDS = "_incremental_customer_ids"


def _scope(params: Mapping[str, Any]) -> dict[str, object]:
    """Bound parameters for the run's customer scope (from its params, read defensively)."""
    def as_int(value: object) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    compared = params.get(INCREMENTAL_IDS)
    if isinstance(compared, list):  # an incremental run: exactly the customers it compared (maybe none)
        return {"from_id": None, "to_id": None, "ids": [int(i) for i in compared]}
    ids = params.get("customer_ids")
    id_list = [i for i in ids if isinstance(i, int) and not isinstance(i, bool)] if isinstance(ids, list) else None
    return {"from_id": as_int(params.get("from_id")), "to_id": as_int(params.get("to_id")),
            "ids": id_list or None}


#: ``{col}`` is the customer id column the scope applies to.
_IN_SCOPE = ("((cast(:from_id as bigint) is null or {col} >= :from_id) "
             "and (cast(:to_id as bigint) is null or {col} <= :to_id) "
             "and (cast(:ids as bigint[]) is null or {col} = any(:ids)))")

# The task that answers each finding of run :run: the customer's latest task opened or last seen by that run
# (one pass over tasks, then a hash join; a per-finding lookup would scan tasks once per finding).
_RUN_TASKS = """
    run_tasks as (
        select distinct on (t.customer_id) t.customer_id, t.id, t.status, t.opened_at, t.resolved_at,
               coalesce(t.resolution ->> 'policy', cast(:run_policy as text)) as policy
        from reconciler.tasks t
        where t.run_id = :run or t.last_seen_run_id = :run
        order by t.customer_id, t.id desc)"""


def _bind_scope(statement: str) -> Any:
    return text(statement).bindparams(bindparam("ids", type_=ARRAY(BigInteger)))


def fetch_run(conn: Connection, run_id: int) -> RunFacts:
    row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
    if row is None:
        raise RunNotFoundError(f"run {run_id} does not exist; list runs with `reconciler tasks list` or run "
                               f"`reconciler run` first")
    params = row["params"] if isinstance(row["params"], dict) else {}
    if row["mode"] == "incremental":  # the report's scope is what the run compared, not the whole ledger
        compared = conn.execute(text("""select coalesce(array_agg(i order by i), '{}') from reconciler.run_chunks,
                                        unnest(customer_ids) as i where run_id = :run"""), {"run": run_id}).scalar_one()
        params = {**params, INCREMENTAL_IDS: [int(i) for i in compared]}
    return RunFacts(
        run_id=int(row["id"]), status=row["status"], trigger=row["trigger"], started_at=row["started_at"],
        finished_at=row["finished_at"], customers_checked=int(row["customers_checked"]),
        drift_count=int(row["drift_count"]), total_abs_drift=Decimal(row["total_abs_drift"]),
        params=params, outcome=row["outcome"] if isinstance(row["outcome"], dict) else {}, error=row["error"],
        mode=row["mode"], mode_reason=row["mode_reason"], verified_from=row["verified_from"],
        verified_to=row["verified_to"])


def fetch_outcomes(conn: Connection, run: RunFacts) -> tuple[OutcomeGroup, ...]:
    rows = conn.execute(text(f"""
        with {_RUN_TASKS}
        select coalesce(t.status, 'no_task') as outcome,
               case when t.status = 'corrected' then t.policy end as policy,
               count(*) as customers, sum(f.stored_balance) as stored_total, sum(f.ledger_sum) as ledger_total,
               sum(f.drift) as net_drift, sum(abs(f.drift)) as abs_drift
        from reconciler.findings f
        left join run_tasks t on t.customer_id = f.customer_id
        where f.run_id = :run
        group by 1, 2 order by 1, 2"""), {"run": run.run_id, "run_policy": _run_policy(run)}).all()
    return tuple(OutcomeGroup(r.outcome, r.policy, int(r.customers), Decimal(r.stored_total),
                              Decimal(r.ledger_total), Decimal(r.net_drift), Decimal(r.abs_drift)) for r in rows)


def _run_policy(run: RunFacts) -> str | None:
    policy = run.params.get("policy")
    return policy if isinstance(policy, str) else None


def fetch_book(conn: Connection, run: RunFacts) -> BookTotals:
    row = conn.execute(_bind_scope(f"""
        with unresolved as (
            select distinct t.customer_id from reconciler.tasks t
            where t.status in ('open', 'needs_review') and {_IN_SCOPE.format(col='t.customer_id')})
        select (select count(*) from customers c where {_IN_SCOPE.format(col='c.id')}) as customers,
               (select coalesce(sum(c.balance), 0) from customers c where {_IN_SCOPE.format(col='c.id')}) as cached,
               (select coalesce(sum(e.amount), 0) from customer_ledger_entries e
                where {_IN_SCOPE.format(col='e.customer_id')}) as ledger,
               (select count(*) from unresolved) as unresolved_customers,
               (select coalesce(sum(c.balance - coalesce((select sum(e.amount) from customer_ledger_entries e
                                                          where e.customer_id = c.id), 0)), 0)
                from customers c join unresolved u on u.customer_id = c.id) as unresolved_drift"""),
        _scope(run.params)).one()
    return BookTotals(int(row.customers), Decimal(row.cached), Decimal(row.ledger), int(row.unresolved_customers),
                      Decimal(row.unresolved_drift))


def fetch_compared(conn: Connection, run: RunFacts) -> ComparedTotals:
    """The run's scope totals from its own comparison statements (``run_chunks``) and its findings: two small
    reads, never a pass over the ledger."""
    from reconciler.run_chunks import compared_totals  # noqa: PLC0415

    totals = compared_totals(conn, run.run_id)
    found = conn.execute(text("select count(*), coalesce(sum(drift), 0) from reconciler.findings where run_id = :r"),
                         {"r": run.run_id}).one()
    return ComparedTotals(
        chunks=int(totals.chunks), compared_chunks=int(totals.compared_chunks),
        chunks_with_totals=int(totals.chunks_with_totals), customers=int(totals.customers),
        cached_total=Decimal(totals.balance_total), ledger_total=Decimal(totals.ledger_total),
        found_customers=int(found[0]), found_net_drift=Decimal(found[1]),
        first_compared_at=totals.first_compared_at, last_compared_at=totals.last_compared_at,
        first_snapshot=totals.first_snapshot, last_snapshot=totals.last_snapshot)


def fetch_top_drifts(conn: Connection, run: RunFacts, limit: int) -> tuple[DriftLine, ...]:
    rows = conn.execute(text(f"""
        with {_RUN_TASKS}
        select f.customer_id, f.stored_balance, f.ledger_sum, f.drift, f.cause,
               case when jsonb_typeof(f.evidence) = 'object' then f.evidence ->> 'summary' end as summary,
               t.id as task_id, t.status as task_status
        from reconciler.findings f
        left join run_tasks t on t.customer_id = f.customer_id
        where f.run_id = :run order by abs(f.drift) desc, f.customer_id limit :limit"""),
        {"run": run.run_id, "limit": limit, "run_policy": _run_policy(run)}).all()
    return tuple(DriftLine(int(r.customer_id), Decimal(r.stored_balance), Decimal(r.ledger_sum), Decimal(r.drift),
                           r.cause, r.summary, r.task_id, r.task_status) for r in rows)


def fetch_causes(conn: Connection, run_id: int) -> tuple[CauseGroup, ...]:
    rows = conn.execute(text("""
        select cause, count(*) as customers, sum(drift) as net_drift, sum(abs(drift)) as abs_drift
        from reconciler.findings where run_id = :run group by cause"""), {"run": run_id}).all()
    return tuple(CauseGroup(r.cause, int(r.customers), Decimal(r.net_drift), Decimal(r.abs_drift)) for r in rows)


def fetch_unresolved(conn: Connection, run: RunFacts) -> tuple[UnresolvedTask, ...]:
    """Every unresolved task in the run's scope (the backlog the aging table shows)."""
    rows = conn.execute(_bind_scope(f"""
        select t.id, t.customer_id, t.status, t.drift, t.opened_at from reconciler.tasks t
        where t.status in ('open', 'needs_review') and {_IN_SCOPE.format(col='t.customer_id')}
        order by t.id"""), _scope(run.params)).all()
    return tuple(UnresolvedTask(int(r.id), int(r.customer_id), r.status, Decimal(r.drift), r.opened_at)
                 for r in rows)


def fetch_changes(conn: Connection, run: RunFacts) -> ChangeCounts:
    """New, persisting and resolved drifting customers against the previous finished run, within this
    run's scope."""
    previous = conn.execute(text("""
        select max(id) from reconciler.runs where id < :run and status in ('succeeded', 'halted')"""),
        {"run": run.run_id}).scalar_one()
    if previous is None:
        row = conn.execute(text("""select count(*) as n, coalesce(sum(abs(drift)), 0) as a
                                   from reconciler.findings where run_id = :run"""), {"run": run.run_id}).one()
        return ChangeCounts(None, int(row.n), 0, 0, Decimal(row.a), ZERO)
    params = {"run": run.run_id, "previous": previous, **_scope(run.params)}
    row = conn.execute(_bind_scope(f"""
        select count(*) filter (where p.customer_id is null) as new,
               count(*) filter (where p.customer_id is not null) as persisting,
               coalesce(sum(abs(f.drift)) filter (where p.customer_id is null), 0) as new_abs,
               coalesce(sum(abs(f.drift)) filter (where p.customer_id is not null), 0) as persisting_abs,
               (select count(*) from reconciler.findings p2
                where p2.run_id = :previous and {_IN_SCOPE.format(col='p2.customer_id')}
                  and not exists (select 1 from reconciler.findings f2
                                  where f2.run_id = :run and f2.customer_id = p2.customer_id)) as resolved
        from reconciler.findings f
        left join reconciler.findings p on p.run_id = :previous and p.customer_id = f.customer_id
        where f.run_id = :run"""), params).one()
    return ChangeCounts(int(previous), int(row.new), int(row.persisting), int(row.resolved),
                        Decimal(row.new_abs), Decimal(row.persisting_abs))


def fetch_history(conn: Connection, run_id: int, limit: int) -> tuple[HistoryPoint, ...]:
    rows = conn.execute(text("""
        select r.id, r.started_at, r.status, r.drift_count, r.total_abs_drift,
               coalesce(t.resolved, 0) as resolved, t.median_hours
        from (select * from reconciler.runs where id <= :run order by id desc limit :limit) r
        left join lateral (
            select count(*) as resolved,
                   percentile_cont(0.5) within group (
                       order by extract(epoch from (t.resolved_at - t.opened_at)) / 3600.0) as median_hours
            from reconciler.tasks t where t.run_id = r.id and t.resolved_at is not null) t on true
        order by r.id"""), {"run": run_id, "limit": limit}).all()
    return tuple(HistoryPoint(int(r.id), r.started_at, r.status, int(r.drift_count), Decimal(r.total_abs_drift),
                              int(r.resolved), None if r.median_hours is None else float(r.median_hours))
                 for r in rows)


def fetch_quality(conn: Connection, run_id: int) -> tuple[QualityLine, ...]:
    rows = conn.execute(select(quality_results.c.suite, quality_results.c.expectation, quality_results.c.success,
                               quality_results.c.details)
                        .where(quality_results.c.run_id == run_id).order_by(quality_results.c.id)).all()
    return tuple(QualityLine(r.suite, r.expectation, bool(r.success),
                             r.details if isinstance(r.details, dict) else {}) for r in rows)


def fetch_report_input(conn: Connection, run_id: int, now: dt.datetime, *, top: int = DEFAULT_TOP_DRIFTS,
                       trend_runs: int = DEFAULT_TREND_RUNS, data_docs_href: str | None = None,
                       book_now: bool = False) -> ReportInput:
    """Everything the report shows, in the caller's snapshot. The scope's totals come from the run's own
    comparison statements; ``book_now`` adds the whole scope as it stands now (one more pass over the
    ledger: seconds on a large one)."""
    run = fetch_run(conn, run_id)
    return ReportInput(
        run=run, outcomes=fetch_outcomes(conn, run), top_drifts=fetch_top_drifts(conn, run, top),
        causes=fetch_causes(conn, run_id), unresolved=fetch_unresolved(conn, run), changes=fetch_changes(conn, run),
        history=fetch_history(conn, run_id, trend_runs), quality=fetch_quality(conn, run_id), now=now,
        book=fetch_book(conn, run) if book_now else None, compared=fetch_compared(conn, run),
        data_docs_href=data_docs_href, writers=fetch_writers(conn, run_id), audit_head=fetch_audit_head(conn))


def fetch_writers(conn: Connection, run_id: int) -> WritersFacts:
    """The guard's census over the run's window (from the previous run's start to this run's start)."""
    from reconciler.guard import read_mode, read_triggers  # noqa: PLC0415
    from reconciler.writers import census, run_window  # noqa: PLC0415

    window = run_window(conn, run_id)
    mode = read_mode(read_triggers(conn))[0]
    return WritersFacts(window.describe(), mode, tuple(census(conn, window)))


def fetch_audit_head(conn: Connection) -> AuditAnchor:
    """The audit chain's head in the report's snapshot."""
    head = read_head(conn)
    return AuditAnchor(head.length, head.hash)


def write_tasks_csv(conn: Connection, run_id: int, path: Path) -> None:
    """One row per finding of the run with its task, streamed from the database (never all in memory)."""
    policy = conn.execute(select(runs.c.params["policy"].astext).where(runs.c.id == run_id)).scalar_one_or_none()
    result = conn.execution_options(yield_per=5000).execute(text(f"""
        with {_RUN_TASKS}
        select f.customer_id, f.stored_balance::text, f.ledger_sum::text, f.drift::text, abs(f.drift)::text,
               f.cause, case when jsonb_typeof(f.evidence) = 'object' then f.evidence ->> 'summary' end,
               t.id, t.status, case when t.status = 'corrected' then t.policy end, t.opened_at, t.resolved_at
        from reconciler.findings f
        left join run_tasks t on t.customer_id = f.customer_id
        where f.run_id = :run order by f.customer_id"""), {"run": run_id, "run_policy": policy})
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in result:
            writer.writerow(["" if v is None else v.isoformat() if isinstance(v, dt.datetime) else v for v in row])


def _data_docs_href(conn: Connection, run_id: int, target: Path, location: str | None = None) -> str | None:
    """A relative link to the run's Data Docs inside ``target`` (or, for a report in a remote store, beside it at
    ``location``); local docs built elsewhere are copied in so the report folder stays self-contained."""
    index = target / DATA_DOCS_DIR / "index.html"
    if location is not None and not report_store.is_local(location):
        remote = report_store.exists(f"{location}/{DATA_DOCS_DIR}/index.html")
        return f"{DATA_DOCS_DIR}/index.html" if remote else None
    if not index.exists():
        stored = conn.execute(text("""
            select details ->> 'data_docs' from reconciler.quality_results
            where run_id = :run and details ? 'data_docs' order by id desc limit 1"""), {"run": run_id}).scalar()
        if (stored and report_store.is_local(stored) and (Path(stored) / "index.html").exists()
                and Path(stored).resolve() != index.parent.resolve()):
            shutil.copytree(stored, target / DATA_DOCS_DIR, dirs_exist_ok=True)
    return f"{DATA_DOCS_DIR}/index.html" if index.exists() else None


# ---- rendering ----------------------------------------------------------------------------------------------

def money(value: Decimal | None) -> str:
    return "" if value is None else format_money(value)


@functools.cache
def _environment() -> Any:
    """The report's Jinja2 environment, made once per process (its template compiles once: Jinja checks the
    file's modification time on each use, so an edited template is still picked up)."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape  # noqa: PLC0415

    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    env.filters["money"] = money
    env.filters["when"] = _when
    env.filters["cause_label"] = cause_label
    env.globals.update(severity=severity, observed=observed)
    return env


def render_html(model: ReportModel) -> str:
    """The report page: Jinja2 with autoescape, charts inlined as SVG."""
    return str(_environment().get_template("report.html.j2").render(m=model, s=model.summary,
                                                                     charts=render_charts(model)))


def _when(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def render_charts(model: ReportModel) -> dict[str, str]:
    """Trend charts as inline SVG strings (empty when there is no history to plot)."""
    points = model.history
    if not points:
        return {}
    labels = [str(p.run_id) for p in points]
    # Floats only for drawing: the tables beside the charts show the exact amounts.
    return {
        "drift_count": line_chart(labels, [float(p.drift_count) for p in points],
                                  "Drifting customers per run", "customers"),
        "abs_drift": line_chart(labels, [float(p.total_abs_drift) for p in points],
                                "Total absolute drift per run", "amount"),
        "resolve": line_chart(labels, [p.median_hours_to_resolve for p in points],
                              "Median hours to resolve (tasks opened by the run)", "hours"),
    }
