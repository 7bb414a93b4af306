"""Section ``dags``: how long the DAG processor takes to parse ``dags/`` (a figure, not a test).

Parsing runs in a fresh interpreter with every database pointed at a closed port (the same probe as
``tests/dags/test_dag_definition.py``, which checks what parsing touches but never how long it takes: wall
clock on a shared 2-core machine is not a correctness property). Target: under 2 s per parse.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from sqlalchemy.engine import URL

SECTION = "dags"
ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "tests" / "dags" / "parse_probe.py"
UNREACHABLE = "postgresql://nobody:secret@127.0.0.1:1/nowhere"
TARGET_SECONDS = 2.0


def _parse_once(home: Path) -> float:
    environment = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": UNREACHABLE.replace("postgresql:", "postgresql+psycopg:"),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
        "RECONCILER_DATABASE_URL": UNREACHABLE,
        "AIRFLOW_CONN_LEDGER_DB": UNREACHABLE,
    }
    result = subprocess.run([sys.executable, str(PROBE), str(ROOT / "dags")], env=environment, capture_output=True,
                            text=True, timeout=300, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return float(report["seconds"])


def run(quick: bool, engine_url: URL) -> list[dict[str, object]]:
    """Parse ``dags/`` a few times; report the median and the worst parse (the database is not used)."""
    with tempfile.TemporaryDirectory(prefix="bench-dags-") as home:
        times = [_parse_once(Path(home)) for _ in range(2 if quick else 5)]
    median, worst = statistics.median(times), max(times)
    return [
        {"section": SECTION, "name": "dag_parse_median", "value": round(median, 4), "unit": "s",
         "target": f"< {TARGET_SECONDS} s", "ok": median < TARGET_SECONDS},
        {"section": SECTION, "name": "dag_parse_worst", "value": round(worst, 4), "unit": "s",
         "target": f"< {TARGET_SECONDS} s", "ok": worst < TARGET_SECONDS},
    ]
