"""``reconciler tasks list`` and ``reconciler tasks resolve``: the people's side of the task lifecycle."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from reconciler.cli.app import ExitCode, emit_json, exits_when_database_lost, fail, open_engine, tasks_app
from reconciler.errors import DatabaseUnavailableError, ReconcilerError
from reconciler.vocabulary import POLICIES, TASK_STATUSES

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from reconciler.correction_executor import Resolved
    from reconciler.tasks import TaskView

ACTIONS = ("correct", "dismiss")
#: Columns when stdout is not a terminal (rich would assume 80 and squeeze the table).
WIDE = 160
DEFAULT_LIMIT = 100
_HELP = {
    "status": f"Only this status: {', '.join(TASK_STATUSES)}.",
    "run": "Only tasks this run opened or last saw drifting.",
    "action": "correct: correct it through the balance core (re-verified under the row lock); dismiss: close it "
              "without changing anything.",
    "policy": "For correct: ledger (balance := ledger sum) or balance (post a reconciliation_adjustment entry).",
}


def _engine() -> Engine:
    try:
        return open_engine()
    except DatabaseUnavailableError as exc:
        fail(str(exc), ExitCode.FAILED)


@tasks_app.command("list")
def list_command(
    status: Annotated[str | None, typer.Option(metavar="STATUS", help=_HELP["status"])] = None,
    run: Annotated[str | None, typer.Option("--run", metavar="RUN_ID", help=_HELP["run"])] = None,
    limit: Annotated[int | None, typer.Option(metavar="N", help=f"At most this many, newest first (table default "
                                                   f"{DEFAULT_LIMIT}; --json default all).", min=1)] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """List reconciliation tasks, newest first."""
    if status is not None and status not in TASK_STATUSES:
        fail(f"--status must be one of {', '.join(TASK_STATUSES)}, got {status!r}", ExitCode.USAGE)
    if run is not None and not run.strip().isdigit():
        fail(f"--run must be a run id (a whole number), got {run!r}", ExitCode.USAGE)
    run_id = int(run) if run is not None else None
    from reconciler.runs import get_run  # noqa: PLC0415
    from reconciler.tasks import count_tasks, list_tasks  # noqa: PLC0415

    engine = _engine()
    try:
        with engine.connect() as conn:
            if run_id is not None:
                get_run(conn, run_id)
            shown = limit if limit is not None or json_output else DEFAULT_LIMIT
            rows = list_tasks(conn, status=status, run_id=run_id, limit=shown)
            total = count_tasks(conn, status=status, run_id=run_id)
    except ReconcilerError as exc:
        fail(str(exc), ExitCode.USAGE)
    finally:
        engine.dispose()
    if json_output:
        emit_json({"count": total, "tasks": [task.to_json() for task in rows]})
        return
    _print_table(rows, total, status, run_id)


def _print_table(rows: list[TaskView], total: int, status: str | None, run: int | None) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from reconciler.money import format_money  # noqa: PLC0415

    console = Console() if sys.stdout.isatty() else Console(width=WIDE)
    where = " ".join(part for part in (status or "", f"run {run}" if run is not None else "") if part)
    if not rows:
        console.print(f"no tasks{' (' + where + ')' if where else ''}")
        return
    table = Table(title=f"Tasks{' (' + where + ')' if where else ''}: {len(rows)} of {total}")
    for name, justify in (("task", "right"), ("customer", "right"), ("drift", "right"), ("balance", "right"),
                          ("ledger sum", "right"), ("status", "left"), ("cause", "left"), ("run", "right"),
                          ("updated", "left")):
        table.add_column(name, justify=justify, no_wrap=name != "cause",  # type: ignore[arg-type]
                         overflow="fold" if name == "cause" else "ellipsis")
    colours = {"open": "yellow", "needs_review": "bold red", "corrected": "green", "dismissed": "dim"}
    for task in rows:
        table.add_row(str(task.id), str(task.customer_id), format_money(task.drift), format_money(task.stored_balance),
                      format_money(task.ledger_sum), f"[{colours[task.status]}]{task.status}[/]", task.cause or "-",
                      str(task.last_seen_run_id or task.run_id or "-"), f"{task.updated_at:%Y-%m-%d %H:%M}")
    console.print(table)
    if total > len(rows):
        console.print(f"showing {len(rows)} of {total}; use --limit N or --json for more")


@tasks_app.command("resolve")
def resolve_command(
    task_id: Annotated[str, typer.Argument(help="The task to resolve (its id).")],
    action: Annotated[str, typer.Option(metavar="correct|dismiss", help=_HELP["action"])],
    by: Annotated[str, typer.Option(metavar="NAME", help="Who approves (recorded in the audit trail).")],
    note: Annotated[str, typer.Option(metavar="TEXT", help="Why (recorded in the audit trail).")],
    policy: Annotated[str, typer.Option(metavar="ledger|balance", help=_HELP["policy"])] = "ledger",
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Resolve an open or needs_review task by hand: correct it or dismiss it, with who and why."""
    if not task_id.strip().isdigit():
        fail(f"TASK_ID must be a task id (a whole number, see `reconciler tasks list`), got {task_id!r}",
             ExitCode.USAGE)
    if action not in ACTIONS:
        fail(f"--action must be one of {', '.join(ACTIONS)}, got {action!r}", ExitCode.USAGE)
    if policy not in POLICIES:
        fail(f"--policy must be one of {', '.join(POLICIES)}, got {policy!r}", ExitCode.USAGE)
    if not by.strip():
        fail("--by must name who approves, got an empty value", ExitCode.USAGE)
    if not note.strip():
        fail("--note must say why, got an empty value", ExitCode.USAGE)
    from reconciler.correction_executor import resolve_task  # noqa: PLC0415

    engine = _engine()
    try:
        with exits_when_database_lost(engine, f"resolving task {task_id} (a correction re-verifies under the "
                                              f"row lock and is keyed by the task, so it applies at most once)"):
            resolved = resolve_task(engine, int(task_id), action, by, note, policy)
    except DatabaseUnavailableError as exc:
        fail(str(exc), ExitCode.FAILED)
    except ReconcilerError as exc:
        fail(str(exc), ExitCode.USAGE)
    finally:
        engine.dispose()
    if json_output:
        emit_json(_resolved_json(resolved))
    else:
        typer.echo(_describe(resolved))
    if resolved.task.unresolved:  # the correction was deferred (a lock timeout): try again
        raise typer.Exit(int(ExitCode.FAILED))


def _resolved_json(resolved: Resolved) -> dict[str, object]:
    correction = resolved.correction
    return {
        "task": resolved.task.to_json(),
        "correction": None if correction is None else {
            "outcome": str(correction.outcome), "reason": correction.reason, **correction.values()},
    }


def _describe(resolved: Resolved) -> str:
    from reconciler.tasks import describe  # noqa: PLC0415

    line = describe(resolved.task)
    if resolved.correction is not None:
        line += f"\n{resolved.correction.reason}"
    return line
