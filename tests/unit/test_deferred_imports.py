"""GX is imported with ``scipy.stats`` deferred: not executed unless used, and whole when it is."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys, importlib.util
from reconciler.quality import import_great_expectations
gx = import_great_expectations()
stats = sys.modules["scipy.stats"]
print(type(stats).__name__)                  # still lazy: GX's import never read it
from scipy import stats as same
print(same is stats, round(float(stats.norm.cdf(0.0)), 3), type(stats).__name__)  # used: loaded whole
print(hasattr(gx, "ExpectationSuite"))
"""


def test_scipy_stats_waits_until_used_and_then_works() -> None:
    """After importing GX, scipy.stats is a lazy module; its first use loads it and gives the usual answers."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120)
    lines = out.stdout.split()
    assert lines == ["_LazyModule", "True", "0.5", "module", "True"], out.stdout + out.stderr
