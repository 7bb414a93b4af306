"""The watchdog's queries on a real database: when the last run succeeded, and which run is the newest."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, insert

from reconciler.alerts import alert_for_staleness, last_success_at, latest_run
from reconciler.schema import runs


def _record_run(engine: Engine, status: str, finished_at: dt.datetime | None) -> None:
    with engine.begin() as conn:
        conn.execute(insert(runs).values(status=status, trigger="scheduled", params={},
                                         started_at=(finished_at or dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5),
                                         finished_at=finished_at))


def test_last_success_ignores_failed_halted_and_running_runs(engine: Engine) -> None:
    """The watchdog's age is from the newest succeeded run; later failed, halted or running runs do not count."""
    assert last_success_at(engine) is None and latest_run(engine) is None
    ok = dt.datetime(2026, 11, 24, 2, 10, tzinfo=dt.UTC)
    _record_run(engine, "succeeded", ok - dt.timedelta(days=1))
    _record_run(engine, "succeeded", ok)
    _record_run(engine, "failed", ok + dt.timedelta(days=1))
    _record_run(engine, "halted", ok + dt.timedelta(days=1, hours=1))
    _record_run(engine, "running", None)
    assert last_success_at(engine) == ok
    latest = latest_run(engine)
    assert latest is not None and latest.status == "running"
    alert = alert_for_staleness(last_success_at(engine), ok + dt.timedelta(days=2), latest=latest)
    assert alert is not None and alert.details["last_success_at"] == ok.isoformat()
    assert f"The newest run {latest.run_id} (scheduled" in alert.text
