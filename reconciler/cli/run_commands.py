"""``reconciler run``: one reconciliation run from the command line.

Exit codes: 0 clean, 1 unresolved drift remains, 2 usage or input error (nothing written, not even a run
row), 3 the run failed or halted. Options are validated before the database is opened.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from reconciler.cli.app import EXIT_CODES_HELP, ExitCode, Policy, app, emit_json, fail, open_engine, open_read_engine
from reconciler.errors import DatabaseUnavailableError, ReconcilerError

if TYPE_CHECKING:
    from rich.console import Console
    from sqlalchemy import Engine

    from reconciler.pipeline import Progress, RunSummary

# Defaults as the help shows them; equal to reconciler.pipeline's DEFAULT_* (a test keeps them so). The
# pipeline is imported inside the command so `reconciler --help` stays fast. Numbers are taken as text and
# validated by RunOptions, so every error message names the option AND the value given.
TOLERANCE = "0.01"
CHUNK_SIZE = 10_000
AUTO_CORRECT_LIMIT = "100.00"
MAX_DRIFT_RATIO = "0.05"
WORKERS = 2
TOP = 10
#: Columns when stdout is not a terminal (rich would assume 80 and squeeze the tables).
WIDE = 160

#: How the options are spelled on the command line, for error messages.
LABELS = {
    "tolerance": "--tolerance", "chunk_size": "--chunk-size", "from_id": "--from-id", "to_id": "--to-id",
    "customer_ids": "--customer-ids", "policy": "--policy", "auto_correct": "--auto-correct",
    "auto_correct_limit": "--auto-correct-limit", "max_drift_ratio": "--max-drift-ratio", "dry_run": "--dry-run",
    "workers": "--workers", "mode": "--incremental/--full",
}


_HELP = {
    "tolerance": "A customer drifts when abs(drift) is greater than this.",
    "chunk_size": "Customers per chunk (one SQL statement each).",
    "from_id": "First customer id to check (inclusive).",
    "to_id": "Last customer id to check (inclusive).",
    "customer_ids": "Only these customers, e.g. 1,2,3.",
    "policy": "ledger: set the balance to the ledger sum; balance: post a reconciliation_adjustment entry.",
    "auto_correct": "Correct drifts within the limit automatically.",
    "auto_correct_limit": "Larger drifts go to needs_review.",
    "max_drift_ratio": "Halt corrections when more than this share of checked customers drift (1 disables).",
    "dry_run": "Record the run and its tasks; change no balance and no entry.",
    "workers": "Chunks compared in parallel, one connection each.",
    "mode": "incremental: only the customers touched since the last verified point (needs the guard; else it "
            "runs full and says so); full: every customer.",
}


@app.command("run", epilog=EXIT_CODES_HELP)
def run(
    tolerance: Annotated[str, typer.Option(metavar="AMOUNT", help=_HELP["tolerance"])] = TOLERANCE,
    chunk_size: Annotated[str, typer.Option(metavar="N", help=_HELP["chunk_size"])] = str(CHUNK_SIZE),
    from_id: Annotated[str | None, typer.Option(metavar="ID", help=_HELP["from_id"])] = None,
    to_id: Annotated[str | None, typer.Option(metavar="ID", help=_HELP["to_id"])] = None,
    customer_ids: Annotated[str | None, typer.Option(metavar="IDS", help=_HELP["customer_ids"])] = None,
    policy: Annotated[Policy, typer.Option(help=_HELP["policy"])] = Policy.LEDGER,
    auto_correct: Annotated[bool, typer.Option("--auto-correct/--no-auto-correct",
                                               help=_HELP["auto_correct"])] = True,
    auto_correct_limit: Annotated[str, typer.Option(metavar="AMOUNT", help=_HELP["auto_correct_limit"])]
        = AUTO_CORRECT_LIMIT,
    max_drift_ratio: Annotated[str, typer.Option(metavar="RATIO", help=_HELP["max_drift_ratio"])] = MAX_DRIFT_RATIO,
    dry_run: Annotated[bool, typer.Option("--dry-run", help=_HELP["dry_run"])] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    workers: Annotated[str, typer.Option(metavar="N", help=_HELP["workers"])] = str(WORKERS),
    top: Annotated[int, typer.Option(metavar="N", help="How many explained drifts to show.", min=0)] = TOP,
    incremental: Annotated[bool, typer.Option("--incremental/--full", help=_HELP["mode"])] = False,
) -> None:
    """Find, explain and correct drift between cached balances and the ledger."""
    from reconciler.errors import RunFailedError  # noqa: PLC0415
    from reconciler.pipeline import RunOptions, run_reconciliation  # noqa: PLC0415

    params: dict[str, object] = {
        "tolerance": tolerance, "chunk_size": chunk_size, "from_id": from_id, "to_id": to_id,
        "customer_ids": customer_ids, "policy": policy.value, "auto_correct": auto_correct,
        "auto_correct_limit": auto_correct_limit, "max_drift_ratio": max_drift_ratio, "dry_run": dry_run,
        "workers": workers, "mode": "incremental" if incremental else "full",
    }
    try:
        options = RunOptions.from_params(params, labels=LABELS)
    except ReconcilerError as exc:
        fail(str(exc), ExitCode.USAGE)
    try:
        # The run holds a connection for its session lock and each chunk worker two at once (bookkeeping and its
        # read-only comparison): a pool below that would open a fresh connection for every chunk.
        engine = open_engine(pool_size=2 * options.workers + 2)
        read_engine = open_read_engine()
    except DatabaseUnavailableError as exc:
        fail(str(exc), ExitCode.FAILED)
    try:
        progress, close = _progress_reporter()
        try:
            summary = run_reconciliation(engine, options, trigger="cli", progress=progress, read_engine=read_engine)
        finally:
            close()
        from reconciler.approvals import current_user, record_trigger_user  # noqa: PLC0415

        record_trigger_user(engine, summary.run_id, current_user())  # the proposer, for the four-eyes rule
        if summary.mode_reason and summary.mode_reason.startswith("incremental requested"):
            sys.stderr.write(f"reconciler: {summary.mode_reason}\n")  # one line, not an error
        if json_output:
            emit_json(summary.to_json())
        else:
            _print_human(read_engine or engine, summary, top)  # report reads: on the read URL when set
    except RunFailedError as exc:
        fail(str(exc), ExitCode.FAILED)
    except ReconcilerError as exc:  # raised before the run started (e.g. unknown ids): nothing was written
        fail(_as_flags(str(exc)), ExitCode.USAGE)
    finally:
        engine.dispose()
        if read_engine is not None:
            read_engine.dispose()
    raise typer.Exit(summary.exit_code)


def _as_flags(message: str) -> str:
    """Spell a message's leading option name as the command line does (``customer_ids:`` -> ``--customer-ids:``)."""
    for key, label in LABELS.items():
        if message.startswith(f"{key}:"):
            return label + message[len(key):]
    return message


# ---- progress ---------------------------------------------------------------------------------------------

class _PlainProgress:
    """Progress lines on stderr when it is not a terminal: at most one per 10% (and the last one)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.last_tenth = -1

    def __call__(self, done: int, total: int, customers: int) -> None:
        tenth = 10 if total == 0 else done * 10 // total
        if tenth == self.last_tenth and done != total:
            return
        self.last_tenth = tenth
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = customers / elapsed
        eta = (elapsed / done * (total - done)) if done else 0.0
        percent = 100 if total == 0 else done * 100 // total
        sys.stderr.write(f"reconciler: chunks {done}/{total} ({percent}%), {customers} customers, "
                         f"{rate:,.0f} customers/s, ETA {eta:.0f}s\n")
        sys.stderr.flush()


def _progress_reporter() -> tuple[Progress, Callable[[], None]]:
    """A progress callback and its closer: a rich bar on a terminal, plain lines otherwise."""
    if not sys.stderr.isatty():
        return _PlainProgress(), lambda: None
    from rich.console import Console  # noqa: PLC0415
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn("comparing chunks"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[customers]:,} customers, {task.fields[rate]:,.0f}/s"),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=False)
    started = time.monotonic()
    task_id = bar.add_task("compare", total=None, customers=0, rate=0.0)
    bar.start()

    def update(done: int, total: int, customers: int) -> None:
        rate = customers / max(time.monotonic() - started, 1e-6)
        bar.update(task_id, total=total, completed=done, customers=customers, rate=rate)

    return update, bar.stop


# ---- human output -----------------------------------------------------------------------------------------

def _print_human(engine: Engine, summary: RunSummary, top: int) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from reconciler.money import format_money  # noqa: PLC0415

    console = Console() if sys.stdout.isatty() else Console(width=WIDE)
    table = Table(title=f"Run {summary.run_id}: {summary.status}{' (dry run)' if summary.dry_run else ''}",
                  show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    if summary.mode:
        table.add_row("mode", f"{summary.mode} ({summary.mode_reason})")
    table.add_row("customers checked", f"{summary.customers_checked:,}")
    table.add_row("drifting", f"{summary.drift_count:,}")
    table.add_row("total absolute drift", format_money(summary.total_abs_drift))
    table.add_row("corrected", f"{summary.corrected:,}")
    table.add_row("need review", f"{summary.needs_review:,}")
    table.add_row("still open", f"{summary.open:,}")
    console.print(table)
    if summary.mode:
        console.print(f"verified point: from {summary.verified_from or 'none'} to {summary.verified_to or 'none'}",
                      highlight=False)
    if summary.halted_reason:
        console.print(f"[bold red]halted:[/] {summary.halted_reason}")
    from reconciler.pipeline import describe_busy  # noqa: PLC0415

    for item in summary.busy:
        console.print(f"[yellow]busy:[/] {describe_busy(item)}")
    if summary.report_path:
        console.print(f"report: {summary.report_path}")
    if top and summary.drift_count:
        _print_drifts(console, engine, summary, top)
    if summary.needs_review or summary.open:
        console.print("next: `reconciler tasks list --status needs_review` and `reconciler tasks resolve TASK_ID "
                      "--action correct|dismiss --by NAME --note TEXT`")


def _print_drifts(console: Console, engine: Engine, summary: RunSummary, top: int) -> None:
    from rich import box  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from reconciler.money import format_money  # noqa: PLC0415
    from reconciler.pipeline import top_drifts  # noqa: PLC0415

    drifts = top_drifts(engine, summary.run_id, top)
    table = Table(title=f"Largest drifts (top {len(drifts)} of {summary.drift_count:,})", box=box.SIMPLE_HEAD)
    rows = [(str(d.customer_id), format_money(d.stored_balance), format_money(d.ledger_sum), format_money(d.drift),
             d.cause or "unknown", f"{d.task_id} {d.task_status}" if d.task_id else "-") for d in drifts]
    names = ("customer", "balance", "ledger sum", "drift", "probable cause", "task")
    widths = [max([len(name), *(len(row[position]) for row in rows)]) for position, name in enumerate(names)]
    # Money and ids are never cut; the cause alone is shortened to fit (the why follows in full below).
    room = console.width - (sum(widths) - widths[4]) - 2 * len(names) - 5
    for position, name in enumerate(names):
        if name == "probable cause":
            table.add_column(name, no_wrap=True, overflow="ellipsis", max_width=max(8, min(widths[4], room)))
        else:
            table.add_column(name, justify="left" if name == "task" else "right", no_wrap=True,
                             min_width=widths[position])
    for row in rows:
        table.add_row(*row)
    console.print(table)
    explained = [drift for drift in drifts if drift.summary]
    if explained:
        console.print("Why:")
        for drift in explained:
            console.print(f"  customer {drift.customer_id}: {drift.summary}", highlight=False)
