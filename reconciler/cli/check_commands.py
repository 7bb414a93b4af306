"""``reconciler check CUSTOMER_ID``: one customer's stored balance against its ledger, right now.

Exit codes: 0 the balance agrees with the ledger (within tolerance), 1 it drifts, 2 unknown customer or
bad input. Reads only (one statement, one snapshot); nothing is written.
"""

from __future__ import annotations

from decimal import Decimal

import typer

from reconciler.cli.app import ExitCode, app, emit_json, fail
from reconciler.errors import CustomerNotFoundError, InvalidAmountError


def direction(drift: Decimal) -> str:
    """Where the stored balance stands relative to the ledger sum."""
    return "above" if drift > 0 else "below" if drift < 0 else "equal"


def next_step(customer_id: int, ok: bool) -> str:
    """What to do next, for people and scripts alike."""
    if ok:
        return "nothing to do: the stored balance agrees with the ledger"
    return (f"reconcile it: `reconciler run --customer-ids {customer_id}` opens a task and corrects it through "
            f"the balance core (add --dry-run to only record it); `reconciler tasks list` shows open tasks")


@app.command("check", epilog="Exit codes: 0 the balance agrees with the ledger; 1 it drifts; 2 unknown customer or "
                            "bad input; 3 the database is unreachable.")
def check(
    customer_id: int = typer.Argument(..., help="The customer id to check."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (decimals as strings)."),
    tolerance: str = typer.Option("0.01", "--tolerance", help="Drift allowed before it counts (strictly greater)."),
) -> None:
    """Compare a customer's stored balance with the sum of its ledger entries (exit 0 ok, 1 drifting)."""
    # psycopg alone: no SQLAlchemy, no balance core, no pool (bench/README.md, CLI start-up)
    from reconciler.balance_check import check_balance, ledger_conninfo  # noqa: PLC0415
    from reconciler.money import format_money, to_tolerance  # noqa: PLC0415

    try:
        limit = to_tolerance(tolerance)
    except InvalidAmountError as exc:
        fail(f"--tolerance: {exc}", ExitCode.USAGE)
    try:
        result = check_balance(ledger_conninfo(), customer_id, limit)
    except CustomerNotFoundError as exc:
        if as_json:
            emit_json({"customer_id": customer_id, "error": "customer_not_found", "message": str(exc)})
        fail(str(exc), ExitCode.USAGE)

    where = direction(result.drift)
    status = "ok" if result.ok else "drifting"
    advice = next_step(customer_id, result.ok)
    if as_json:
        emit_json({
            "customer_id": customer_id,
            "stored_balance": result.stored_balance,
            "ledger_sum": result.ledger_sum,
            "drift": result.drift,
            "direction": where,
            "entry_count": result.entry_count,
            "tolerance": result.tolerance,
            "ok": result.ok,
            "status": status,
            "next_step": advice,
        })
    else:
        if result.drift == 0:
            explained = "(balance equals the ledger sum)"
        else:
            explained = f"(the stored balance is {format_money(abs(result.drift))} {where} the ledger sum)"
        verdict = (f"OK: |drift| {format_money(abs(result.drift))} <= tolerance {result.tolerance}" if result.ok
                   else f"DRIFTING: |drift| {format_money(abs(result.drift))} > tolerance {result.tolerance}")
        width = max(len(format_money(v)) for v in (result.stored_balance, result.ledger_sum, result.drift))
        typer.echo(f"customer {customer_id}")
        typer.echo(f"  stored balance  {format_money(result.stored_balance):>{width}}")
        entries = f"{result.entry_count} {'entry' if result.entry_count == 1 else 'entries'}"
        typer.echo(f"  ledger sum      {format_money(result.ledger_sum):>{width}}  ({entries})")
        typer.echo(f"  drift           {format_money(result.drift):>{width}}  {explained}")
        typer.echo(f"  status          {verdict}")
        typer.echo(f"  next            {advice}")
    raise typer.Exit(int(ExitCode.CLEAN if result.ok else ExitCode.DRIFT_REMAINS))
