"""``reconciler tasks list`` and ``reconciler tasks resolve``: the people's side of the task lifecycle."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from reconciler.cli.app import (
    Action,
    ExitCode,
    Policy,
    TaskStatus,
    database_command,
    emit_json,
    fail,
    tasks_app,
)

if TYPE_CHECKING:
    from reconciler.correction_executor import Resolved
    from reconciler.tasks import TaskView

#: Columns when stdout is not a terminal (rich would assume 80 and squeeze the table).
WIDE = 160
DEFAULT_LIMIT = 100
_HELP = {
    "status": "Only tasks in this status.",
    "run": "Only tasks this run opened or last saw drifting.",
    "action": "correct: correct it through the balance core (re-verified under the row lock); dismiss: close it "
              "without changing anything.",
    "policy": "For correct: ledger (balance := ledger sum) or balance (post a reconciliation_adjustment entry).",
}


@tasks_app.command("list")
def list_command(
    status: Annotated[TaskStatus | None, typer.Option(help=_HELP["status"])] = None,
    run: Annotated[str | None, typer.Option("--run", metavar="RUN_ID", help=_HELP["run"])] = None,
    limit: Annotated[int | None, typer.Option(metavar="N", help=f"At most this many, newest first (table default "
                                                   f"{DEFAULT_LIMIT}; --json default all).", min=1)] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """List reconciliation tasks, newest first."""
    if run is not None and not run.strip().isdigit():
        fail(f"--run must be a run id (a whole number), got {run!r}", ExitCode.USAGE)
    run_id = int(run) if run is not None else None
    from reconciler.runs import get_run  # noqa: PLC0415
    from reconciler.tasks import count_tasks, list_tasks  # noqa: PLC0415

    with database_command("listing tasks") as (engine, _), engine.connect() as conn:
        if run_id is not None:
            get_run(conn, run_id)
        shown = limit if limit is not None or json_output else DEFAULT_LIMIT
        wanted = status.value if status is not None else None
        rows = list_tasks(conn, status=wanted, run_id=run_id, limit=shown)
        total = count_tasks(conn, status=wanted, run_id=run_id)
    if json_output:
        emit_json({"count": total, "tasks": [task.to_json() for task in rows]})
        return
    _print_table(rows, total, wanted, run_id)


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


@tasks_app.command("resolve", epilog="Exit codes: 0 resolved; 2 bad input, unknown or already resolved task, or an "
                   "approver who may not approve it; 3 the correction was deferred (row locked: try again) or the "
                   "database is unreachable.")
def resolve_command(
    task_id: Annotated[str, typer.Argument(help="The task to resolve (its id).")],
    action: Annotated[Action, typer.Option(help=_HELP["action"])],
    by: Annotated[str, typer.Option(metavar="NAME", help="Who approves (recorded in the audit trail). Correcting a "
                                                         "task above the auto-correct limit needs a person other "
                                                         "than the one who triggered its run (four eyes).")],
    note: Annotated[str, typer.Option(metavar="TEXT", help="Why (recorded in the audit trail).")],
    policy: Annotated[Policy, typer.Option(help=_HELP["policy"])] = Policy.LEDGER,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Resolve an open or needs_review task by hand: correct it or dismiss it, with who and why."""
    if not task_id.strip().isdigit():
        fail(f"TASK_ID must be a task id (a whole number, see `reconciler tasks list`), got {task_id!r}",
             ExitCode.USAGE)
    if not by.strip():
        fail("--by must name who approves, got an empty value", ExitCode.USAGE)
    if not note.strip():
        fail("--note must say why, got an empty value", ExitCode.USAGE)
    from reconciler.approvals import resolve_with_four_eyes  # noqa: PLC0415

    with database_command(f"resolving task {task_id} (a correction re-verifies under the row lock and is keyed "
                          f"by the task, so it applies at most once)") as (engine, _):
        # Above the auto-correct limit, --by must name someone other than the person who triggered the run.
        resolved = resolve_with_four_eyes(engine, int(task_id), action.value, by, note, policy.value)
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
