"""``reconciler guard observe | enforce [--allow APP]... | off | status [--json]`` and ``reconciler writers``.

Every guard subcommand is idempotent and changes the triggers in one transaction; bad input exits 2 and
changes nothing. ``guard status`` exits 0 when the guard is off or fully enabled, 1 when it is on with a
trigger missing or disabled (its writes are not seen). ``writers`` reads only.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from reconciler.cli.app import _PLAIN, ExitCode, app, emit_json, fail, open_engine

guard_app = typer.Typer(no_args_is_help=True, **_PLAIN,
                        help="See (observe) or refuse (enforce) writes made around the balance core.")
app.add_typer(guard_app, name="guard")


def _print_status(status: object, as_json: bool) -> None:
    from reconciler.guard import GuardStatus  # noqa: PLC0415

    assert isinstance(status, GuardStatus)
    if as_json:
        emit_json(status.to_json())
        return
    allow = f" (allowed through: {', '.join(status.allow)})" if status.allow else ""
    typer.echo(f"guard: {status.mode}{allow}")
    for trigger in status.triggers:
        state = "enabled" if trigger.enabled else f"DISABLED (tgenabled {trigger.tgenabled})"
        typer.echo(f"  trigger {trigger.name} on {trigger.table_name}: {state}")
    for name in status.missing if status.mode != "off" else ():
        typer.echo(f"  trigger {name}: MISSING")
    if status.disabled or (status.missing and status.mode != "off"):
        typer.echo("  writes made while a trigger is disabled or missing are not seen: re-enable it "
                   "(ALTER TABLE ... ENABLE TRIGGER) or run the guard command again")
    since = (f"since run {status.since_run_id} started ({status.since:%Y-%m-%d %H:%M:%S%z})"
             if status.since_run_id is not None and status.since is not None else "so far (no run yet)")
    typer.echo(f"  bypass writes {since}: {status.bypass_writes_since:,} from {status.writers_since:,} "
               f"writer(s), {status.broke_ledger_since:,} broke the ledger")
    for note in status.notes:
        typer.echo(f"  note: {note}")


@guard_app.command("observe")
def observe(as_json: bool = typer.Option(False, "--json", help="Print the resulting status as JSON.")) -> None:
    """Record every write around the core in reconciler.bypass_writes; refuse nothing."""
    from reconciler.guard import install  # noqa: PLC0415

    _print_status(install(open_engine(), "observe"), as_json)


@guard_app.command("enforce")
def enforce(
    allow: Annotated[list[str] | None, typer.Option(
        "--allow", help="An application_name still let through (and recorded); repeat for more.")] = None,
    as_json: bool = typer.Option(False, "--json", help="Print the resulting status as JSON."),
) -> None:
    """Refuse every write around the core, except from allow-listed applications (recorded)."""
    from reconciler.errors import InvalidOperationError  # noqa: PLC0415
    from reconciler.guard import check_allow, install  # noqa: PLC0415

    try:
        names = check_allow(allow or [])
    except InvalidOperationError as exc:
        fail(str(exc), ExitCode.USAGE)
    _print_status(install(open_engine(), "enforce", names), as_json)


@guard_app.command("off")
def off(as_json: bool = typer.Option(False, "--json", help="Print the resulting status as JSON.")) -> None:
    """Remove the guard's triggers and functions (the recorded bypass writes stay)."""
    from reconciler.guard import uninstall  # noqa: PLC0415

    _print_status(uninstall(open_engine()), as_json)


@guard_app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """The mode, the allow-list, whether every trigger is enabled, and the bypass writes since the last run."""
    from reconciler.guard import guard_status  # noqa: PLC0415

    current = guard_status(open_engine())
    _print_status(current, as_json)
    raise typer.Exit(int(ExitCode.CLEAN if current.healthy else ExitCode.DRIFT_REMAINS))


def _parse_since(value: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        fail(f"--since must be an ISO 8601 time such as 2026-12-01T00:00:00Z, got {value!r}", ExitCode.USAGE)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


@app.command("writers")
def writers(
    since: str | None = typer.Option(None, "--since", help="Only writes at or after this ISO 8601 time (UTC if "
                                                           "no offset)."),
    run: int | None = typer.Option(None, "--run", help="The writes a run reports: from the previous run's start "
                                                       "to this run's start."),
    as_json: bool = typer.Option(False, "--json", help='Print {"writers": [...]} (decimals as strings).'),
) -> None:
    """The census of writers around the core, one row per (application_name, role, fingerprint)."""
    from reconciler.errors import RunNotFoundError  # noqa: PLC0415
    from reconciler.money import format_money  # noqa: PLC0415
    from reconciler.writers import Window, census, run_window, totals  # noqa: PLC0415

    if since is not None and run is not None:
        fail("give --since or --run, not both", ExitCode.USAGE)
    engine = open_engine()
    with engine.connect() as conn:
        if run is not None:
            try:
                window = run_window(conn, run)
            except RunNotFoundError as exc:
                fail(str(exc), ExitCode.USAGE)
        else:
            window = Window(since=_parse_since(since) if since is not None else None)
        found = census(conn, window)
    if as_json:
        emit_json({"writers": [w.to_json() for w in found], "window": {
            "since": window.since, "until": window.until, "run_id": window.run_id,
            "previous_run_id": window.previous_run_id}})
        return
    writes, net, absolute = totals(found)
    typer.echo(f"writers around the core, {window.describe()}: {len(found)} code path(s), {writes:,} write(s), "
               f"{format_money(absolute)} moved around the ledger (net {format_money(net)})")
    for w in found:
        typer.echo(f"  {w.application_name or '(no application_name)'} (role {w.role}): {w.writes:,} write(s) to "
                   f"{w.customers:,} customer(s), {format_money(w.abs_amount)} (net {format_money(w.net_amount)}), "
                   f"{w.broke_ledger:,} broke the ledger, last {w.last_seen:%Y-%m-%d %H:%M:%S%z}")
        typer.echo(f"      {w.fingerprint}")
    if not found:
        typer.echo("  none recorded (is the guard on? `reconciler guard status`)")
