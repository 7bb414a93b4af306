"""Data-quality checks of a run: the expectation suites in ``expectations/`` run through Great Expectations.

Invariants: every expectation is an ``UnexpectedRowsExpectation`` evaluated by SQL inside PostgreSQL (only
the unexpected rows, a sample at most, ever leave the database); a failed expectation is data (a row in
``reconciler.quality_results``), never an exception; storing is idempotent per run (a rerun replaces that
run's rows in one transaction). Great Expectations is imported only when a check runs (or is preloaded:
:mod:`reconciler.gx_runtime`).

The suites are GX Core 1.x JSON. Besides GX's own ``{batch}``, their SQL may name run values as
``$run_id``, ``$tolerance``, ``$entries_after``, ``$tasks_since`` and ``$known_kinds`` (the one list of entry kinds,
:mod:`reconciler.entry_kinds`); they are rendered here from validated
ints, Decimals and datetimes only (GX takes the query as text, so it cannot take bound parameters).

Severity: ``critical`` failures make the quality step fail; ``warning`` failures are reported only. Drift
the run found is a warning (``balance_matches_ledger``): the run goes on to open tasks and correct it, and
the run's exit code already says whether drift remains.

Cost: checks the database already guarantees (NOT NULL, a valid unique index, a validated foreign key,
the numeric(18,2) type) are proven from the catalog, and read the rows only when the guarantee is missing.
The ledger is append-only, so the kind and ``balance_after`` chain checks read the entries appended since
the last stored check; an expectation's first check reads the whole history of a ledger of up to
:data:`FULL_HISTORY_LIMIT` entries (``full=True`` always does). Where the last check stopped is a
:class:`reconciler.positions.Position` (entry ids plus the snapshot's in-flight transactions), stored with each
result: an entry whose transaction was still open at check time is read by the next check, with no clock lag
and whatever ``created_at`` says. (The tasks window still goes by ``updated_at`` with :data:`WATERMARK_LAG`.)

How GX is loaded (its import, deferred modules, template cache) is :mod:`reconciler.gx_runtime`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import re
import shutil
import string
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, delete, insert, select, text
from sqlalchemy.engine import URL

from reconciler import report_store
from reconciler.data_docs import make_offline
from reconciler.db import read_only_url, reading
from reconciler.entry_kinds import EntryKinds, load_entry_kinds
from reconciler.errors import InvalidOperationError, RunNotFoundError
from reconciler.gx_runtime import (
    DEFERRED_IMPORTS,
    cache_gx_templates,
    defer_import,
    import_great_expectations,
    preload_great_expectations,
    quiet_gx,
)
from reconciler.money import DEFAULT_TOLERANCE, to_tolerance
from reconciler.positions import Position, read_position
from reconciler.schema import quality_results, runs

log = logging.getLogger("reconciler.quality")

EXPECTATIONS_ENV = "RECONCILER_EXPECTATIONS_DIR"
#: Tasks updated less than this before check time are read again by the next check (the tasks window).
WATERMARK_LAG = dt.timedelta(hours=1)
#: An expectation never checked before reads the whole history of a ledger up to this many entries; on a
#: larger ledger it starts at the current watermark (``reconciler quality --full`` reads everything once).
FULL_HISTORY_LIMIT = 1_000_000
#: Unexpected rows kept per expectation in ``quality_results.details`` (GX fetches at most 200).
SAMPLE_ROWS = 20
DATA_DOCS_DIR = "data_docs"
SEVERITIES = ("critical", "warning", "info")
_PLACEHOLDER = re.compile(r"\$([a-z_]+)")
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class ExpectationOutcome:
    """One evaluated expectation."""

    suite: str
    expectation: str
    success: bool
    severity: str
    observed: int | None
    description: str
    sample: tuple[Mapping[str, Any], ...] = ()
    scope: str | None = None
    window: Mapping[str, Any] | None = None
    error: str | None = None

    def details(self, data_docs: Path | str | None) -> dict[str, Any]:
        """The JSON stored in ``quality_results.details``."""
        return {"severity": self.severity, "observed": self.observed, "description": self.description,
                "sample": [dict(row) for row in self.sample], "scope": self.scope,
                "window": dict(self.window) if self.window else None, "error": self.error,
                "data_docs": str(data_docs) if data_docs else None}


@dataclass(frozen=True)
class QualitySummary:
    """Outcome of the quality step: how many expectations were evaluated and how many failed.

    ``failed`` counts failed ``critical`` expectations (they make the run's exit code 1); ``warnings``
    counts failed expectations of lower severity (e.g. drift the run found and goes on to correct)."""

    evaluated: int
    failed: int
    #: The Data Docs index: a local path, or a URL in the report store (RECONCILER_REPORTS_URL).
    data_docs_path: Path | str | None = None
    warnings: int = 0
    outcomes: tuple[ExpectationOutcome, ...] = ()
    seconds: float = 0.0

    @property
    def success(self) -> bool:
        return self.failed == 0


@dataclass(frozen=True)
class SuiteSpec:
    """A suite file as loaded: its GX JSON and the table its batch reads."""

    name: str
    table: str
    schema: str
    data: Mapping[str, Any] = field(repr=False)
    path: Path | None = None


@dataclass(frozen=True)
class RunValues:
    """The values a suite's ``$placeholders`` may take for one check. The windows of the incremental checks
    are per expectation (keyed by its ``meta.name``): the entries after what earlier checks covered."""

    run_id: int
    tolerance: Decimal
    entries_through: int
    checked_at: dt.datetime
    entries_after: Mapping[str, int] = field(default_factory=dict)
    tasks_since: Mapping[str, dt.datetime] = field(default_factory=dict)
    #: Where an expectation never checked before starts: 0 (the whole history) or the current watermark.
    first_entries_after: int = 0
    #: The ledger position at check time (stored with each entries window; the next check starts at its
    #: ``settled_id``).
    position: Position | None = None

    def after(self, name: str) -> int:
        return self.entries_after.get(name, self.first_entries_after)

    def for_expectation(self, name: str) -> dict[str, object]:
        return {"run_id": self.run_id, "tolerance": self.tolerance, "entries_after": self.after(name),
                "tasks_since": self.tasks_since.get(name, _EPOCH), "known_kinds": load_entry_kinds()}

    def window(self, kind: object, name: str) -> dict[str, Any] | None:
        if kind == "entries":
            after = self.after(name)
            return {"entries_after": after, "entries_through": max(self.entries_through, after),
                    "full_history": after == 0,
                    "position": self.position.to_json() if self.position is not None else None}
        if kind == "tasks":
            return {"tasks_since": self.tasks_since.get(name, _EPOCH).isoformat(),
                    "tasks_until": (self.checked_at - WATERMARK_LAG).isoformat()}
        return None

    def scope(self, kind: object, name: str, described: str | None) -> str | None:
        if kind == "entries":
            after = self.after(name)
            return "all entries (the whole history)" if after == 0 else f"entries after id {after:,}"
        if kind == "tasks":
            since = self.tasks_since.get(name)
            return "all tasks" if since is None else f"tasks changed since {since:%Y-%m-%d %H:%M} UTC"
        return described


# ---- suites as data -----------------------------------------------------------------------------------------

def expectations_dir() -> Path:
    """``$RECONCILER_EXPECTATIONS_DIR``, else ``expectations/`` at the project root."""
    configured = os.environ.get(EXPECTATIONS_ENV, "").strip()
    return Path(configured) if configured else Path(__file__).resolve().parent.parent / "expectations"


def load_suites(directory: Path | None = None) -> list[SuiteSpec]:
    """Every ``*.json`` suite in ``directory`` (sorted by file name), checked for what this module needs."""
    folder = directory or expectations_dir()
    paths = sorted(folder.glob("*.json"))
    if not paths:
        raise InvalidOperationError(f"no expectation suites (*.json) in {folder}; set {EXPECTATIONS_ENV} to the "
                                    f"folder holding them")
    return [parse_suite(json.loads(path.read_text()), path) for path in paths]


def parse_suite(data: Mapping[str, Any], path: Path | None = None) -> SuiteSpec:
    where = path or "suite"
    name = data.get("name")
    target = (data.get("meta") or {}).get("reconciler") or {}
    if not isinstance(name, str) or not name:
        raise InvalidOperationError(f"{where}: a suite needs a non-empty 'name'")
    if not isinstance(target.get("table"), str):
        raise InvalidOperationError(f"{where}: meta.reconciler.table must name the table the suite reads")
    for expectation in data.get("expectations", []):
        kind = expectation.get("type")
        if kind != "unexpected_rows_expectation":
            raise InvalidOperationError(
                f"{where}: expectation type {kind!r} is not allowed; use unexpected_rows_expectation so the "
                f"check runs as SQL inside PostgreSQL")
        if not isinstance((expectation.get("meta") or {}).get("name"), str):
            raise InvalidOperationError(f"{where}: every expectation needs meta.name")
        if expectation.get("severity", "critical") not in SEVERITIES:
            raise InvalidOperationError(f"{where}: severity must be one of {', '.join(SEVERITIES)}")
    schema = target.get("schema") or "public"
    for part in (target["table"], schema):
        if not isinstance(part, str) or not _IDENTIFIER.fullmatch(part):
            raise InvalidOperationError(f"{where}: table and schema must be plain lower-case SQL identifiers, "
                                        f"got {part!r}")
    return SuiteSpec(name, target["table"], schema, data, path)


def sql_literal(value: object) -> str:
    """A SQL literal for a run value: ints, finite Decimals, aware datetimes and the list of entry kinds
    (checked plain words, :mod:`reconciler.entry_kinds`) only (never free text)."""
    if isinstance(value, EntryKinds):
        return value.sql_list()
    if isinstance(value, bool) or value is None:
        raise InvalidOperationError(f"cannot render {value!r} into an expectation's SQL")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal) and value.is_finite():
        return format(value, "f")
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return f"timestamptz '{value.astimezone(dt.UTC).isoformat()}'"
    raise InvalidOperationError(f"cannot render {type(value).__name__} {value!r} into an expectation's SQL")


def render_query(query: str, values: Mapping[str, object]) -> str:
    """Replace ``$name`` placeholders with literals of ``values``; an unknown name is an error."""
    unknown = sorted(set(_PLACEHOLDER.findall(query)) - set(values))
    if unknown:
        raise InvalidOperationError(f"expectation SQL uses unknown placeholder(s) {', '.join(unknown)}; "
                                    f"known: {', '.join(sorted(values))}")
    return string.Template(query).substitute({key: sql_literal(v) for key, v in values.items()})


def render_suite(spec: SuiteSpec, values: RunValues) -> dict[str, Any]:
    """The suite's GX JSON with its queries rendered for one check."""
    data = json.loads(json.dumps(spec.data))
    for expectation in data.get("expectations", []):
        kwargs = expectation.setdefault("kwargs", {})
        name = expectation["meta"]["name"]
        kwargs["unexpected_rows_query"] = render_query(kwargs["unexpected_rows_query"], values.for_expectation(name))
    return data


# ---- run values and watermarks ------------------------------------------------------------------------------

def run_tolerance(params: Mapping[str, Any]) -> Decimal:
    raw = params.get("tolerance")
    return DEFAULT_TOLERANCE if raw is None else to_tolerance(str(raw))


def read_run_values(conn: Connection, run_id: int, *, full: bool = False,
                    full_history_limit: int = FULL_HISTORY_LIMIT) -> RunValues:
    """The run's tolerance and the windows of the incremental checks: each expectation reads the entries after
    the latest window stored by another run's check (so a rerun reads the same window). An expectation never
    checked before reads the whole history when the ledger holds at most ``full_history_limit`` entries, else
    starts at the current watermark; ``full`` reads the whole history whatever was checked before."""
    row = conn.execute(select(runs.c.params).where(runs.c.id == run_id)).first()
    if row is None:
        raise RunNotFoundError(f"run {run_id} does not exist; start one with `reconciler run`")
    params = row.params if isinstance(row.params, dict) else {}
    checked_at = conn.execute(text("select now()")).scalar_one()
    previous = [] if full else conn.execute(text("""
        select distinct on (expectation) expectation, id,
               (details -> 'window' ->> 'entries_through')::bigint as entries_through,
               details -> 'window' -> 'position' as position,
               (details -> 'window' ->> 'tasks_until')::timestamptz as tasks_until
        from reconciler.quality_results
        where run_id is distinct from :run and jsonb_typeof(details -> 'window') = 'object'
        order by expectation, id desc"""), {"run": run_id}).all()
    positions = {r.expectation: Position.from_json(r.position) for r in previous}
    latest = max(((r.id, positions[r.expectation]) for r in previous if positions[r.expectation] is not None),
                 default=(0, None), key=lambda item: item[0])[1]
    now = read_position(conn, latest)
    skip_history = not full and now.through_id > full_history_limit
    if latest is None and skip_history:
        # The first check of a large ledger starts at the current end (documented above): so does what it settles.
        now = dataclasses.replace(now, settled_id=now.through_id)
    after: dict[str, int] = {}
    for r in previous:
        position = positions[r.expectation]
        if position is not None:
            after[r.expectation] = position.settled_id
        elif r.entries_through is not None:  # a window stored before positions existed
            after[r.expectation] = int(r.entries_through)
    return RunValues(
        run_id=run_id, tolerance=run_tolerance(params), entries_through=now.through_id, checked_at=checked_at,
        entries_after=after,
        tasks_since={r.expectation: r.tasks_until for r in previous if r.tasks_until is not None},
        first_entries_after=now.settled_id if skip_history else 0,
        position=now)


# ---- running the suites through GX --------------------------------------------------------------------------

def gx_connection_string(url: URL) -> str:
    """A SQLAlchemy URL GX accepts: psycopg 3, and ``localhost`` as host when the socket is in ``?host=``
    (GX rejects an empty host)."""
    target = url.set(drivername="postgresql+psycopg")
    if not target.host and target.query.get("host"):
        target = target.set(host="localhost")
    return target.render_as_string(hide_password=False)


def check_run_quality(engine: Engine, run_id: int, out_dir: Path | None = None, *,
                      full: bool = False, read_engine: Engine | None = None,
                      ready: Callable[[], None] | None = None) -> QualitySummary:
    """Run every suite for ``run_id`` through GX (ephemeral context), build Data Docs into
    ``<out_dir>/data_docs`` (default: the run's folder in the report store, RECONCILER_REPORTS_URL) and store one
    result row per expectation. ``full`` makes the incremental checks read the whole ledger history (slow on a
    large ledger). The suites read on ``read_engine`` (default ``engine``), in read-only sessions; only the
    results are written, on ``engine``. Without a separate ``read_engine``, each expectation's SQL runs once
    (:func:`stage_unexpected_rows`); with one, GX runs it on the read side itself (count, then rows).

    ``ready`` (a blocking call) splits the check in two: the suites that do not read the run's own results
    (no ``$run_id`` in their SQL: see :func:`waits_for_run`) are validated first, then ``ready()`` waits (e.g.
    for the comparison to finish), then the others; everything is stored together at the end, once."""
    started = time.monotonic()
    specs = load_suites()
    reader = read_engine or engine
    with reading(reader) as conn:
        values = read_run_values(conn, run_id, full=full)
    gx_url = gx_connection_string(read_only_url(reader.url))
    stage_on = engine if read_engine is None else None
    index: Path | str
    if out_dir is not None:
        docs_dir = out_dir / DATA_DOCS_DIR
        outcomes = run_suites(gx_url, specs, values, docs_dir, engine=stage_on, ready=ready)
        docs_location: Path | str = docs_dir
        index = docs_dir / "index.html"
    else:  # the report store (RECONCILER_REPORTS_URL): the same place whichever worker runs this step
        location = report_store.run_location(run_id, DATA_DOCS_DIR)
        with report_store.staged(location, replace=True) as docs_dir:
            outcomes = run_suites(gx_url, specs, values, docs_dir, engine=stage_on, ready=ready)
        local = report_store.is_local(location)
        docs_location = docs_dir if local else location
        index = docs_dir / "index.html" if local else f"{location}/index.html"
    with engine.begin() as conn:
        store_outcomes(conn, run_id, outcomes, docs_location, values.checked_at)
    failed = [o for o in outcomes if not o.success]
    critical = sum(1 for o in failed if o.severity == "critical")
    return QualitySummary(evaluated=len(outcomes), failed=critical, warnings=len(failed) - critical,
                          data_docs_path=index, outcomes=tuple(outcomes),
                          seconds=round(time.monotonic() - started, 3))


STAGE_TABLE = "reconciler.quality_unexpected"


def staged_query(check_key: str, name: str, columns: Sequence[str]) -> str:
    """GX's query for an expectation whose unexpected rows were staged: a read of the staged rows with the
    original columns (JSON values: numbers stay numbers). ``{batch}`` sits in a comment: GX wants it named."""
    for part in (check_key, name, *columns):
        if not _STAGE_SAFE.fullmatch(part):
            raise InvalidOperationError(f"cannot stage an expectation named or shaped {part!r}")
    picked = ", ".join(f"u.row -> '{c}' AS \"{c}\"" for c in columns) if columns else "u.row AS \"row\""
    return (f"SELECT {picked} FROM {STAGE_TABLE} AS u WHERE u.check_key = '{check_key}' "
            f"AND u.expectation = '{name}' ORDER BY u.ordinal /* staged once from {{batch}} */")


_STAGE_SAFE = re.compile(r"[A-Za-z0-9_.:\-]+")
_JOIN = re.compile(r"\bjoin\b", re.IGNORECASE)


def stage_unexpected_rows(engine: Engine, check_key: str, specs: Sequence[SuiteSpec],
                          rendered: Sequence[dict[str, Any]]) -> int:
    """Run each expectation's SQL ONCE, in PostgreSQL, keeping its unexpected rows in :data:`STAGE_TABLE`, and
    point the rendered suites' queries at them, so GX's two passes (count, then rows) read only those rows.

    An expectation whose SQL fails here keeps its own query (GX then runs it and reports its error as a failed
    result, as before): staging is only ever an optimisation."""
    staged = 0
    proxied = engine.raw_connection()
    try:
        conn = proxied.driver_connection
        assert isinstance(conn, psycopg.Connection)
        # The rendered SQL goes to psycopg as it is (no parameters, so no placeholder parsing of its text);
        # the key and the name are checked plain words.
        with conn.transaction():
            for spec, suite in zip(specs, rendered, strict=True):
                table = f"(SELECT * FROM {spec.schema}.{spec.table})"
                for expectation in suite.get("expectations", []):
                    kwargs = expectation["kwargs"]
                    name = f"{spec.name}.{expectation['meta']['name']}"
                    if not (_STAGE_SAFE.fullmatch(check_key) and _STAGE_SAFE.fullmatch(name)):
                        continue
                    query = kwargs["unexpected_rows_query"]
                    # As GX substitutes {batch}: aliased, unless the query joins (then it aliases it itself).
                    batch = table if _JOIN.search(query) else f"{table} AS subselect"
                    query = query.replace("{batch}", batch)
                    try:
                        with conn.transaction():  # a savepoint: a failing query leaves the others staged
                            conn.execute(f"insert into {STAGE_TABLE} (check_key, expectation, ordinal, row) "
                                         f"select '{check_key}', '{name}', row_number() over (), to_jsonb(q) "
                                         f"from ({query}) as q")
                            first = conn.execute(f"select row from {STAGE_TABLE} where check_key = '{check_key}' "
                                                 f"and expectation = '{name}' and ordinal = 1").fetchone()
                    except psycopg.Error as exc:
                        log.debug("expectation %s not staged (%s); GX runs its own query", name, exc)
                        continue
                    columns = list(first[0]) if first is not None and isinstance(first[0], dict) else []
                    kwargs["unexpected_rows_query"] = staged_query(check_key, name, columns)
                    staged += 1
    finally:
        proxied.close()
    return staged


def clear_staged(engine: Engine, check_key: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"delete from {STAGE_TABLE} where check_key = :key"), {"key": check_key})


def waits_for_run(spec: SuiteSpec) -> bool:
    """Whether a suite reads the run's own results (``$run_id`` in a query): it must wait for the comparison."""
    return any("$run_id" in e.get("kwargs", {}).get("unexpected_rows_query", "")
               for e in spec.data.get("expectations", []))


def run_suites(connection_string: str, specs: Sequence[SuiteSpec], values: RunValues,
               docs_dir: Path, *, engine: Engine | None = None,
               ready: Callable[[], None] | None = None) -> list[ExpectationOutcome]:
    """Evaluate the suites in one ephemeral GX context; Data Docs go to ``docs_dir``, built once. With
    ``engine``, each expectation's SQL runs once (:func:`stage_unexpected_rows`) and GX reads its rows. With
    ``ready``, the suites that do not wait for the run (:func:`waits_for_run`) go first, then ``ready()``."""
    with quiet_gx():
        gx = import_great_expectations()  # (1.3-2.5 s: only when the step runs)
        from great_expectations.core.run_identifier import RunIdentifier  # noqa: PLC0415
        from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: PLC0415

        cache_gx_templates()
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        if docs_dir.is_dir():  # a rerun replaces the run's Data Docs, as it replaces its stored results
            shutil.rmtree(docs_dir)
        docs_dir.mkdir(parents=True)
        for site, config in dict(context.variables.data_docs_sites or {}).items():
            context.delete_data_docs_site(site)
            _remove_empty_temp_dir((config.get("store_backend") or {}).get("base_directory"))
        context.add_data_docs_site(site_name="run", site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        })
        source = context.data_sources.add_postgres("ledger", connection_string=connection_string)
        rendered = [render_suite(spec, values) for spec in specs]
        check_key = f"run-{values.run_id}-{uuid.uuid4().hex}"
        staged = 0
        phases = ([[i for i, spec in enumerate(specs) if not waits_for_run(spec)],
                   [i for i, spec in enumerate(specs) if waits_for_run(spec)]] if ready is not None
                  else [list(range(len(specs)))])
        run_results: list[Any] = []
        try:
            for number, phase in enumerate(phases):
                if number > 0 and ready is not None:
                    ready()
                if not phase:
                    continue
                if engine is not None:
                    staged += stage_unexpected_rows(engine, check_key, [specs[i] for i in phase],
                                                    [rendered[i] for i in phase])
                definitions = []
                for i in phase:
                    spec = specs[i]
                    asset = source.add_query_asset(f"{spec.schema}.{spec.table}",
                                                   query=f"SELECT * FROM {spec.schema}.{spec.table}")
                    batch = asset.add_batch_definition_whole_table(f"{spec.schema}.{spec.table}")
                    suite = context.suites.add(gx.ExpectationSuite(**rendered[i]))
                    definitions.append(context.validation_definitions.add(
                        gx.ValidationDefinition(name=spec.name, data=batch, suite=suite)))
                checkpoint = context.checkpoints.add(gx.Checkpoint(
                    name=f"reconciler_quality_{number}", validation_definitions=definitions, actions=[],
                    result_format={"result_format": "COMPLETE"}))
                run_results.append(checkpoint.run(run_id=RunIdentifier(run_name=f"run-{values.run_id}",
                                                                       run_time=values.checked_at)))
            # One build of the whole site once every suite is validated: UpdateDataDocsAction would rebuild
            # the index once per validation definition (measured: 1.7 s instead of 2.8 s for three suites).
            context.build_data_docs(site_names=["run"])
        finally:
            source.get_engine().dispose()
            if engine is not None and staged:
                clear_staged(engine, check_key)
        make_offline(docs_dir)  # GX's pages load their CSS and scripts from CDNs: serve installed copies
    outcomes: list[ExpectationOutcome] = []
    for suite_result in (r for result in run_results for r in result.run_results.values()):
        for item in suite_result.results:
            outcomes.append(outcome_from_result(suite_result.suite_name, item.to_json_dict(), values))
    order = {spec.name: i for i, spec in enumerate(specs)}
    return sorted(outcomes, key=lambda o: order.get(o.suite, len(order)))


def _remove_empty_temp_dir(path: object) -> None:
    """GX's ephemeral context makes a temporary folder for a default docs site we replace; remove it."""
    if isinstance(path, str) and Path(path).parent == Path(tempfile.gettempdir()):
        with contextlib.suppress(OSError):
            Path(path).rmdir()


def outcome_from_result(suite: str, result: Mapping[str, Any], values: RunValues) -> ExpectationOutcome:
    """One GX expectation result (as JSON) -> an :class:`ExpectationOutcome`. An expectation that raised
    (bad SQL, a lost connection) is a failure carrying the error, never a crash."""
    config = result.get("expectation_config") or {}
    meta = config.get("meta") or {}
    detail = result.get("result") or {}
    error = exception_message(result.get("exception_info"))
    raised = error is not None
    observed = detail.get("observed_value")
    rows = (detail.get("details") or {}).get("unexpected_rows") or []
    severity = config.get("severity") or "critical"
    return ExpectationOutcome(
        suite=suite, expectation=str(meta.get("name") or config.get("type")),
        success=bool(result.get("success")) and not raised,
        severity="critical" if raised else str(severity),
        observed=observed if isinstance(observed, int) and not isinstance(observed, bool) else None,
        description=str(config.get("description") or ""),
        sample=tuple(_json_safe(row) for row in rows[:SAMPLE_ROWS]),
        scope=values.scope(meta.get("window"), str(meta.get("name")), meta.get("scope")),
        window=None if raised else values.window(meta.get("window"), str(meta.get("name"))),
        error=error,
    )


def exception_message(info: object) -> str | None:
    """The first line of the error GX caught, if any. GX reports it flat (``raised_exception``,
    ``exception_message``) or keyed by the metric that failed."""
    if not isinstance(info, Mapping):
        return None
    candidates = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, Mapping)]
    for candidate in candidates:
        message = candidate.get("exception_message")
        if candidate.get("raised_exception") or message:
            lines = str(message or "unknown error").strip().splitlines()
            return lines[0] if lines else "unknown error"
    return None


def _json_safe(row: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): v if isinstance(v, int | str | bool) or v is None else str(v) for k, v in row.items()}


def store_outcomes(conn: Connection, run_id: int, outcomes: Sequence[ExpectationOutcome], docs_dir: Path | str,
                   evaluated_at: dt.datetime) -> None:
    """Replace the run's stored results with ``outcomes`` (call inside one transaction)."""
    conn.execute(delete(quality_results).where(quality_results.c.run_id == run_id))
    if outcomes:
        conn.execute(insert(quality_results), [
            {"run_id": run_id, "suite": o.suite, "expectation": o.expectation, "success": o.success,
             "details": o.details(docs_dir), "evaluated_at": evaluated_at} for o in outcomes])


__all__ = ["DEFERRED_IMPORTS", "defer_import", "import_great_expectations", "preload_great_expectations"]
