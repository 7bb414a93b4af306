"""Print what the demo's Airflow run did: the run summary, its explained drifts and where the report is.

Reads only: the newest run in ``reconciler.runs`` (the one ``airflow dags test`` just made), through the
library's own functions. Exit 0 when that run succeeded, 1 otherwise.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from reconciler.alerts import latest_run
from reconciler.db import make_engine
from reconciler.money import format_money
from reconciler.pipeline import load_summary, top_drifts

TOP = 12


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
    console.print(f"report: {summary.report_path or '(none written)'}")
    console.print(f"tasks:  .venv/bin/reconciler tasks list --run {summary.run_id}")
    engine.dispose()
    return 0 if summary.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
