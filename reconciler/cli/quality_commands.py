"""``reconciler quality``: run the expectation suites for a run on their own.

Exit codes: 0 every critical expectation passed, 1 some failed (their unexpected rows are stored with the
run and shown in its report), 2 usage error (e.g. unknown run), 3 database unreachable.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from reconciler.cli.app import (
    ExitCode,
    app,
    database_command,
    emit_json,
    run_or_latest,
)

if TYPE_CHECKING:
    from reconciler.quality import QualitySummary


@app.command("quality")
def quality(
    run: Annotated[int | None, typer.Option("--run", help="The run to check (default: the latest run).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for Data Docs' parent (default: the run's "
                                                          "report folder).")] = None,
    full: Annotated[bool, typer.Option("--full", help="Read the whole ledger history in the incremental checks "
                                                     "(kinds, balance_after chain), not only new entries.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Evaluate the expectation suites (Great Expectations, in PostgreSQL) and store the results with the run."""
    from reconciler.quality import check_run_quality  # noqa: PLC0415

    with database_command("checking data quality") as (engine, read_engine):
        run = run_or_latest(engine, run, "check")
        summary = check_run_quality(engine, run, out, full=full, read_engine=read_engine)
    if json_output:
        emit_json(summary_json(run, summary))
    else:
        _print(run, summary)
    raise typer.Exit(int(ExitCode.CLEAN if summary.success else ExitCode.DRIFT_REMAINS))


def summary_json(run_id: int, summary: QualitySummary) -> dict[str, object]:
    return {
        "run_id": run_id, "evaluated": summary.evaluated, "failed": summary.failed, "warnings": summary.warnings,
        "success": summary.success, "seconds": summary.seconds,
        "data_docs_path": str(summary.data_docs_path) if summary.data_docs_path else None,
        "results": [{"suite": o.suite, "expectation": o.expectation, "success": o.success, "severity": o.severity,
                     "observed": o.observed, "error": o.error} for o in summary.outcomes],
    }


def _print(run_id: int, summary: QualitySummary) -> None:
    for o in summary.outcomes:
        mark = "pass" if o.success else ("FAIL" if o.severity == "critical" else o.severity.upper())
        rows = "" if o.observed is None else f" ({o.observed} unexpected rows)"
        error = f": {o.error}" if o.error else ""
        typer.echo(f"{mark:7} {o.suite}.{o.expectation}{rows}{error}")
    warnings = f"{summary.warnings} warning{'' if summary.warnings == 1 else 's'}"
    typer.echo(f"run {run_id}: {summary.evaluated} expectations, {summary.failed} failed, {warnings} in "
               f"{summary.seconds:.1f} s; Data Docs: {summary.data_docs_path}")
