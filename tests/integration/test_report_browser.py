"""The report opened in a real headless browser (Debian's chromium), offline: the rendered DOM shows the key
figures, the screenshot is not blank, and the Data Docs link opens to the expectation results."""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image
from sqlalchemy import Engine

from reconciler.quality import check_run_quality
from reconciler.report import build_run_report
from tests.factories import NOW, scripted_history

BROWSER_TIMEOUT = 90  # seconds, per page


def _chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    message = ("chromium is not installed: the report was NOT checked in a real browser "
               "(install it with `apt-get install -y chromium`; .ci/run does so in CI)")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    warnings.warn(message, stacklevel=2)
    pytest.skip(message)


def _browse(browser: str, profile: Path, url: str, *extra: str) -> str:
    """Run headless chromium on ``url`` with the network cut off (every host resolves to nothing)."""
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
               *extra, url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
def test_report_renders_in_a_real_browser(engine: Engine, tmp_path: Path) -> None:
    """Headless chromium, offline, shows the run's key figures in the rendered DOM, draws a non-blank page, and
    the Data Docs link opens to a page listing the expectation suites."""
    browser = _chromium()
    history = scripted_history(engine)
    run_id = history.runs[2]
    folder = tmp_path / "report"
    check_run_quality(engine, run_id, folder)
    build_run_report(engine, run_id, folder, now=NOW)
    page = (folder / "report.html").resolve()

    dom = _browse(browser, tmp_path / "profile", page.as_uri(), "--dump-dom")
    for figure in ('id="customers-checked">6<', 'id="drifting">3<', 'id="total-abs-drift">357.27<',
                   'id="needs-review">1<', 'id="open">2<', 'id="halted">no<', "-142.73", "100.50", "-250.00",
                   "Duplicated ledger entry", "Data Docs"):
        assert figure in dom, figure
    assert dom.count("<svg") == 3
    assert 'href="data_docs/index.html"' in dom

    shot = tmp_path / "report.png"
    _browse(browser, tmp_path / "profile", page.as_uri(), f"--screenshot={shot}", "--window-size=1280,2000")
    pixels = image.imread(str(shot))[..., :3]
    colours = np.unique((pixels.reshape(-1, 3) * 255).round().astype(np.uint8), axis=0)
    ink = float((pixels.mean(axis=2) < 0.9).mean())
    assert len(colours) > 50, f"only {len(colours)} colours: the page looks blank"
    assert ink > 0.02, f"only {ink:.1%} of the page is ink"

    docs = _browse(browser, tmp_path / "profile", (folder / "data_docs" / "index.html").resolve().as_uri(),
                   "--dump-dom")
    for suite in ("balance_integrity", "ledger_entries", "reconciler_invariants"):
        assert suite in docs, suite
