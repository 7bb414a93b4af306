"""One exception hierarchy under :class:`ReconcilerError`.

Drift is data, never an exception: these are raised only when a caller breaks a contract
(bad input, unknown customer, unreachable database). Each message names the value, what was
expected, and what to do next.
"""

from __future__ import annotations

from typing import Any


class ReconcilerError(Exception):
    """Raised for every failure the product reports to its callers; catch this for all of them."""


class InvalidAmountError(ReconcilerError, ValueError):
    """Raised when an amount is not an exact money value: a float, more than 2 decimal places,
    not a number, or beyond numeric(18,2)."""


class FloatAmountError(InvalidAmountError, TypeError):
    """Raised when a ``float`` reaches a money function; floats cannot hold cents exactly."""


class NonPositiveAmountError(InvalidAmountError):
    """Raised when an add, subtract or transfer amount is zero or negative."""


class InvalidOperationError(ReconcilerError, ValueError):
    """Raised when an operation, policy or option value is not one of the allowed ones."""


class CustomerNotFoundError(ReconcilerError, LookupError):
    """Raised when a customer id does not exist in ``customers``."""


class InsufficientFundsError(ReconcilerError):
    """Raised when a debit would take a balance below zero and negative balances are not allowed."""


class IdempotencyConflictError(ReconcilerError):
    """Raised when an idempotency key is reused for a different customer, amount or kind."""


class CustomerBusyError(ReconcilerError):
    """Raised when a correction asked not to wait finds the customer's row locked by another session; nothing
    was written. ``lockers`` are the sessions seen holding the lock (:class:`reconciler.row_locks.RowLocker`)."""

    def __init__(self, message: str, customer_id: int, lockers: tuple[Any, ...] = ()) -> None:
        super().__init__(message)
        self.customer_id = customer_id
        self.lockers = lockers


class TransientDatabaseError(ReconcilerError):
    """Raised when serialization failures or deadlocks persist after the bounded retries."""


class ReadDatabaseLagError(TransientDatabaseError):
    """Raised when the read database (``RECONCILER_READ_DATABASE_URL``, a replica) does not show a run as the
    primary does within the wait; retrying later is safe."""


class DatabaseUnavailableError(ReconcilerError):
    """Raised when the configured database cannot be reached; the message names it without its password."""


class DatabaseLostError(DatabaseUnavailableError):
    """Raised when the database went away in the middle of a command or a run step; the message is ONE line:
    what was lost, which database (without its password), and that rerunning is safe."""


class TaskNotFoundError(ReconcilerError, LookupError):
    """Raised when a reconciliation task id does not exist."""


class TaskStateError(ReconcilerError):
    """Raised when a task transition is not allowed from its current status (e.g. resolving a corrected task)."""


class RunNotFoundError(ReconcilerError, LookupError):
    """Raised when a run id does not exist."""


class DemoDataError(ReconcilerError):
    """Raised when demo seeding would touch a ledger that demo seeding did not create."""


class AlertDeliveryError(ReconcilerError):
    """Raised when an alert could not be delivered (webhook refused or unreachable, SMTP error); the message
    names the channel without its secrets."""


class InvalidChunkSizeError(InvalidOperationError):
    """Raised when a chunk size is not a whole number of customers >= 1."""


class RunStateError(ReconcilerError):
    """Raised when a run step is asked of a run that is not in a state allowing it (e.g. a failed run)."""


class RunFailedError(ReconcilerError):
    """Raised when a run started and then failed; the run is marked ``failed`` with the reason and
    ``run_id`` names it (the original exception is the ``__cause__``)."""

    def __init__(self, message: str, run_id: int) -> None:
        super().__init__(message)
        self.run_id = run_id


class UnknownEntryKindError(InvalidOperationError):
    """Raised when a ledger entry's kind is not in the list of entry kinds (unknown, with surrounding
    whitespace, or longer than the list allows); the message lists the allowed kinds and where to add one,
    and nothing is written."""


class FourEyesError(ReconcilerError):
    """Raised when a correction above the auto-correct limit would be approved by the person who proposed it
    (triggered the run that sent it to review), or by someone outside the configured approvers."""
