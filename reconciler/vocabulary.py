"""The product's shared words, defined once: correction policies, causes of drift, the correction key.

Invariant: every module that names a policy or a cause takes it from here (the balance core, corrections,
the pipeline's options, explain, the demo, the report model, the CLI), so a new word is added in one place.
Pure: no I/O.
"""

from __future__ import annotations

import enum
from typing import Final

from reconciler.errors import InvalidOperationError

#: A task's statuses (``reconciler.tasks.status``); the CLI validates ``--status`` against them without
#: importing SQLAlchemy.
TASK_STATUSES: Final = ("open", "needs_review", "corrected", "dismissed")
#: ``ledger`` sets the balance to the ledger sum; ``balance`` posts an adjusting entry.
POLICIES: Final = ("ledger", "balance")
DEFAULT_POLICY: Final = "ledger"
#: The kind of the adjusting entry policy ``balance`` posts.
ADJUSTMENT_KIND: Final = "reconciliation_adjustment"


def check_policy(policy: object, *, name: str = "policy") -> str:
    """Return ``policy`` when it is one of :data:`POLICIES`, else raise naming the allowed ones."""
    if not isinstance(policy, str) or policy not in POLICIES:
        raise InvalidOperationError(
            f"{name} must be one of {', '.join(POLICIES)}, got {policy!r}: 'ledger' sets the balance to the "
            f"ledger sum, 'balance' posts a {ADJUSTMENT_KIND} entry")
    return policy


class Cause(enum.StrEnum):
    """The probable cause of a drift, as explain names it and the report labels it."""

    MISSING_ENTRY = "missing_entry"
    DUPLICATED_ENTRY = "duplicated_entry"
    SIGN_FLIPPED_ENTRY = "sign_flipped_entry"
    UNAPPLIED_ENTRY = "unapplied_entry"
    BALANCE_WRITTEN_AROUND_LEDGER = "balance_written_around_ledger"
    UNKNOWN = "unknown"
    #: Found by the balance core's real-time check, not by explain.
    CHAIN_MISMATCH = "chain_mismatch"


#: The causes explain may name (all but the real-time one).
EXPLAINED_CAUSES: Final = tuple(c.value for c in Cause if c is not Cause.CHAIN_MISMATCH)

#: Idempotency keys of task corrections are this prefix and the task id.
KEY_PREFIX: Final = "reconcile:task:"


def correction_key(task_id: int) -> str:
    """The idempotency key of a task's correction: the same task is never corrected twice."""
    return f"{KEY_PREFIX}{task_id}"
