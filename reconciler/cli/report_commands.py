"""``reconciler report``: write a run's finance report (HTML, tasks.csv, summary.json) and print its path."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from reconciler.cli.app import (
    app,
    database_command,
    run_or_latest,
)


@app.command("report")
def report(
    run: Annotated[int | None, typer.Option("--run", help="The run to report (default: the latest run).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Folder to write into (default: run-N in "
                                                          "RECONCILER_REPORTS_URL, else .reconciler/reports).")] = None,
    book_now: Annotated[bool, typer.Option("--book-now", help="Also tie out the whole scope as it stands now "
                                                              "(one more pass over the ledger).")] = False,
) -> None:
    """Build the finance report of a run and print where its HTML file is (a path or a URL)."""
    from reconciler.report import build_run_report, report_html_path  # noqa: PLC0415

    with database_command("building the report (nothing was written yet)") as (engine, read_engine):
        run = run_or_latest(engine, run, "report")
        folder = build_run_report(read_engine or engine, run, out, book_now=book_now)
    typer.echo(str(report_html_path(folder)))
