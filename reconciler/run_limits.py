"""The bounds and defaults of a run's options, defined once and light to import (no database, no I/O).

Invariant: :class:`reconciler.pipeline.RunOptions` validates against these, and the Airflow DAG's Params
read them at parse time, so a form can never accept a value the library refuses (or refuse one it accepts).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

from reconciler.money import DEFAULT_TOLERANCE
from reconciler.vocabulary import DEFAULT_POLICY, POLICIES

DEFAULT_CHUNK_SIZE: Final = 10_000
MIN_CHUNK_SIZE: Final = 1
MAX_CHUNK_SIZE: Final = 10_000_000
DEFAULT_AUTO_CORRECT_LIMIT: Final = Decimal("100.00")
DEFAULT_MAX_DRIFT_RATIO: Final = Decimal("0.05")
DEFAULT_WORKERS: Final = 2
#: Each worker holds a connection; the default engine pool allows 20.
MAX_WORKERS: Final = 16
BIGINT_MAX: Final = 9_223_372_036_854_775_807

__all__ = [
    "BIGINT_MAX", "DEFAULT_AUTO_CORRECT_LIMIT", "DEFAULT_CHUNK_SIZE", "DEFAULT_MAX_DRIFT_RATIO", "DEFAULT_POLICY",
    "DEFAULT_TOLERANCE", "DEFAULT_WORKERS", "MAX_CHUNK_SIZE", "MAX_WORKERS", "MIN_CHUNK_SIZE", "POLICIES",
]
