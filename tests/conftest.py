"""Test-wide setup: isolate every test run from the user's own ``.reconciler`` and database settings."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports pgserver or airflow: they read these at import time.
_RUN_DIR = Path(tempfile.mkdtemp(prefix="reconciler-tests-"))
_XDG = _RUN_DIR / "xdg"
_XDG.mkdir(mode=0o700)
_XDG.chmod(0o700)
os.environ["XDG_RUNTIME_DIR"] = str(_XDG)
os.environ["RECONCILER_HOME"] = str(_RUN_DIR / "home")
os.environ.pop("RECONCILER_DATABASE_URL", None)
os.environ.pop("RECONCILER_READ_DATABASE_URL", None)

pytest_plugins = ["tests.fix_db", "tests.fix_steps", "tests.fix_http", "tests.fix_roles", "tests.fix_hitl"]
