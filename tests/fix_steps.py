"""Stand-ins for the two slow steps of a run (Great Expectations and the report), for tests about
the engine. Those steps cost seconds per run and have their own tests; a test that wants them real
asks for ``real_steps``."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def real_steps() -> None:
    """Run the real quality and report steps in this test."""


@pytest.fixture
def quick_quality_and_report(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace check_run_quality and build_run_report by stand-ins that record nothing, unless the test
    asks for ``real_steps``."""
    if "real_steps" in request.fixturenames:
        return
    from reconciler import quality, report

    monkeypatch.setenv("RECONCILER_QUALITY_WORKER", "off")  # the stand-ins below live in this process only
    monkeypatch.setattr(quality, "check_run_quality",
                        lambda engine, run_id, out_dir=None, **_: quality.QualitySummary(evaluated=0, failed=0))
    monkeypatch.setattr(report, "build_run_report", lambda engine, run_id, out_dir=None: Path("/nonexistent/report"))
