"""Print what the demo's Airflow run did: the run summary, its explained drifts and where the report is.

Reads only: the newest run in ``reconciler.runs`` (the one ``airflow dags test`` just made), through the
library's own functions. Exit 0 when that run succeeded, 1 otherwise.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, text

from reconciler.alerts import latest_run
from reconciler.db import make_engine
from reconciler.money import format_money
from reconciler.pipeline import load_summary, top_drifts
from reconciler.writers import census, run_window

TOP = 12


def print_writers(console: Console, engine: Engine, run_id: int) -> None:
    """The guard's census for the run (who wrote around the core before it, how often, how much) and the
    run's drifts whose explanation names such a writer."""
    with engine.connect() as conn:
        window = run_window(conn, run_id)
        writers = census(conn, window)
        named = conn.execute(text("""
            select customer_id, drift, evidence ->> 'summary' as summary from reconciler.findings
            where run_id = :run and evidence ? 'writers' order by abs(drift) desc, customer_id limit :n"""),
                             {"run": run_id, "n": TOP}).all()
    if not writers:
        console.print("[bold]Writers around the core:[/] none recorded before this run\n")
        return
    table = Table(title=f"Writers around the core ({window.describe()})", title_justify="left")
    for column in ("writer (role)", "writes", "customers", "net", "moved", "broke ledger"):
        table.add_column(column, justify="left" if column.startswith("writer") else "right")
    for w in writers:
        table.add_row(f"{w.application_name or '(none)'} ({w.role})", f"{w.writes:,}", f"{w.customers:,}",
                      format_money(w.net_amount), format_money(w.abs_amount), f"{w.broke_ledger:,}")
    console.print(table)
    for number, w in enumerate(writers, 1):
        console.print(f"  {number}. {w.application_name or '(none)'}: {w.fingerprint}", highlight=False)
    if named:
        console.print("\n[bold]Drifts whose writer the guard saw[/]")
        for r in named:
            console.print(f"  customer {r.customer_id:>7}  drift {format_money(r.drift):>10}  {r.summary}",
                          highlight=False)
    console.print()


def main() -> int:
    console = Console(soft_wrap=True)
    engine = make_engine()
    newest = latest_run(engine)
    if newest is None:
        console.print("[red]no reconciliation run recorded[/]: the DAG run did not start one")
        return 1
    summary = load_summary(engine, newest.run_id)

    table = Table(title=f"Reconciliation run {summary.run_id} ({newest.trigger}, through Airflow): {summary.status}",
                  show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    for label, value in (("customers checked", f"{summary.customers_checked:,}"),
                         ("drifting customers", f"{summary.drift_count:,}"),
                         ("total absolute drift", format_money(summary.total_abs_drift)),
                         ("corrected", f"{summary.corrected:,}"),
                         ("need review (above the auto-correct limit)", f"{summary.needs_review:,}"),
                         ("still open", f"{summary.open:,}")):
        table.add_row(label, value)
    console.print(table)
    if summary.halted_reason:
        console.print(f"[bold red]halted:[/] {summary.halted_reason}")
    if summary.error:
        console.print(f"[bold red]error:[/] {summary.error}")

    drifts = top_drifts(engine, summary.run_id, TOP)
    if drifts:
        console.print(f"\n[bold]Explained drifts[/] (largest {len(drifts)} of {summary.drift_count:,}; "
                      "drift = balance - ledger sum)")
        for drift in drifts:
            task = f"task #{drift.task_id} {drift.task_status}" if drift.task_id else "no task"
            console.print(f"  customer {drift.customer_id:>7}  balance {format_money(drift.stored_balance):>12}  "
                          f"ledger {format_money(drift.ledger_sum):>12}  drift {format_money(drift.drift):>10}  "
                          f"[bold]{drift.cause or 'unknown'}[/]  ({task})")
            if drift.summary:
                console.print(f"      {drift.summary}", highlight=False)
        console.print()
    print_writers(console, engine, summary.run_id)
    console.print(f"report: {summary.report_path or '(none written)'}")
    console.print(f"tasks:  .venv/bin/reconciler tasks list --run {summary.run_id}")
    engine.dispose()
    return 0 if summary.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
