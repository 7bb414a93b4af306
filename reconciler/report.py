"""Finance report of a run. Placeholder until the report issue lands: writes summary.json only."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import Engine, select

from reconciler.config import reports_dir
from reconciler.schema import runs


def build_run_report(engine: Engine, run_id: int, out_dir: Path | None = None) -> Path:
    """Write the report for ``run_id`` into ``out_dir`` (default ``.reconciler/reports/run-N``); return the folder."""
    target = out_dir or reports_dir() / f"run-{run_id}"
    target.mkdir(parents=True, exist_ok=True)
    with engine.connect() as conn:
        row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().one()
    summary = {key: str(value) if value is not None else None for key, value in row.items()}
    (target / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return target
