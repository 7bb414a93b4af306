"""Run options: what a run checks and how it may correct, validated on construction (pure).

Invariant: a :class:`RunOptions` holds only valid values; every error names the option as the caller
spelled it (``labels``) and the value given. The bounds and defaults come from
:mod:`reconciler.run_limits`, the module the DAG's Params read too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from decimal import Decimal, InvalidOperation

from reconciler import change_feed
from reconciler.corrections import Guardrails
from reconciler.errors import InvalidOperationError, ReconcilerError
from reconciler.money import DEFAULT_TOLERANCE, ZERO, to_money
from reconciler.run_limits import (
    BIGINT_MAX,
    DEFAULT_AUTO_CORRECT_LIMIT,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_DRIFT_RATIO,
    DEFAULT_POLICY,
    DEFAULT_WORKERS,
    MAX_CHUNK_SIZE,
    MAX_WORKERS,
    MIN_CHUNK_SIZE,
)
from reconciler.vocabulary import check_policy

_BIGINT_MAX = BIGINT_MAX

Progress = Callable[[int, int, int], None]


def _integer(value: object, label: str, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidOperationError(f"{label} must be a whole number, got {value!r}")
    try:
        number = int(value.strip()) if isinstance(value, str) else value
    except ValueError:
        raise InvalidOperationError(f"{label} must be a whole number, got {value!r}") from None
    if not low <= number <= high:
        raise InvalidOperationError(f"{label} must be between {low} and {high}, got {number}")
    return number


def _money_at_least_zero(value: object, label: str) -> Decimal:
    money = to_money(value, name=label)
    if money < 0:
        raise InvalidOperationError(f"{label} must be 0 or more, got {money}")
    return money


def _ratio(value: object, label: str) -> Decimal:
    if isinstance(value, bool):
        raise InvalidOperationError(f"{label} must be a number between 0 and 1, got {value!r}")
    try:
        # A ratio is not money: a float from an orchestrator's form is taken at its shortest repr.
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidOperationError(f"{label} must be a number between 0 and 1, got {value!r}") from None
    if not number.is_finite() or not ZERO <= number <= 1:
        raise InvalidOperationError(
            f"{label} must be between 0 and 1 (the share of checked customers that may drift before corrections "
            f"halt; 1 disables the halt), got {value!r}")
    return number


def _flag(value: object, label: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
        return value.strip().lower() in ("true", "yes", "1", "on")
    raise InvalidOperationError(f"{label} must be true or false, got {value!r}")


def _customer_ids(value: object, label: str) -> tuple[int, ...]:
    if isinstance(value, str):
        parts: Sequence[object] = [part for part in value.split(",")]
    elif isinstance(value, list | tuple):
        parts = value
    else:
        raise InvalidOperationError(f"{label} must be a comma-separated list of customer ids like 1,2,3, got {value!r}")
    ids: set[int] = set()
    for part in parts:
        text_part = part.strip() if isinstance(part, str) else part
        if text_part == "":
            raise InvalidOperationError(
                f"{label} has an empty item in {value!r}; write ids separated by single commas, like 1,2,3")
        ids.add(_integer(text_part, f"{label} item", low=-_BIGINT_MAX, high=_BIGINT_MAX))
    if not ids:
        raise InvalidOperationError(f"{label} must list at least one customer id, got {value!r}")
    return tuple(sorted(ids))


def _policy(value: object, label: str) -> str:
    if not isinstance(value, str):
        raise InvalidOperationError(f"{label} must be ledger or balance, got {value!r}")
    return check_policy(value.strip(), name=label)


_PARSERS: dict[str, Callable[[object, str], object]] = {
    "tolerance": _money_at_least_zero,
    "chunk_size": lambda v, label: _integer(v, label, low=MIN_CHUNK_SIZE, high=MAX_CHUNK_SIZE),
    "from_id": lambda v, label: _integer(v, label, low=-_BIGINT_MAX, high=_BIGINT_MAX),
    "to_id": lambda v, label: _integer(v, label, low=-_BIGINT_MAX, high=_BIGINT_MAX),
    "customer_ids": _customer_ids,
    "policy": _policy,
    "auto_correct": _flag,
    "auto_correct_limit": _money_at_least_zero,
    "max_drift_ratio": _ratio,
    "dry_run": _flag,
    "workers": lambda v, label: _integer(v, label, low=1, high=MAX_WORKERS),
    "mode": lambda v, label: change_feed.check_mode(v, name=label),
    "full_sweep_days": lambda v, label: _integer(v, label, low=1, high=3650),
}


@dataclass(frozen=True)
class RunOptions:
    """What a run checks and how it may correct. Every value is validated on construction."""

    tolerance: Decimal = DEFAULT_TOLERANCE
    chunk_size: int = DEFAULT_CHUNK_SIZE
    from_id: int | None = None
    to_id: int | None = None
    customer_ids: tuple[int, ...] | None = None
    policy: str = DEFAULT_POLICY
    auto_correct: bool = True
    auto_correct_limit: Decimal = DEFAULT_AUTO_CORRECT_LIMIT
    max_drift_ratio: Decimal = DEFAULT_MAX_DRIFT_RATIO
    dry_run: bool = False
    workers: int = DEFAULT_WORKERS
    #: full (every customer in scope) or incremental (the customers touched since the verified point).
    mode: str = change_feed.DEFAULT_MODE
    #: Scheduled runs: an incremental run is full when the last full sweep is this many days old.
    full_sweep_days: int | None = None

    def __post_init__(self) -> None:
        for key, value in _normalise({f.name: getattr(self, f.name) for f in fields(self)}, {}).items():
            object.__setattr__(self, key, value)

    @classmethod
    def from_params(cls, params: Mapping[str, object], *, labels: Mapping[str, str] | None = None) -> RunOptions:
        """Options from JSON-like params (an orchestrator's Params, a run's stored ``params``); None means the
        default. Raises :class:`InvalidOperationError` / :class:`InvalidAmountError` naming the option (as
        ``labels`` spells it, e.g. ``--tolerance``) and the value."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise InvalidOperationError(
                f"unknown run option(s) {', '.join(map(repr, unknown))}; the options are {', '.join(sorted(names))}")
        given = {key: value for key, value in params.items() if value is not None}
        return cls(**_normalise(given, labels or {}))  # type: ignore[arg-type]

    def to_params(self) -> dict[str, object]:
        """JSON-able (decimals as strings); ``from_params(to_params())`` gives the same options."""
        params: dict[str, object] = asdict(self)
        for key in ("tolerance", "auto_correct_limit", "max_drift_ratio"):
            params[key] = str(params[key])
        params["customer_ids"] = list(self.customer_ids) if self.customer_ids is not None else None
        return params

    @property
    def guardrails(self) -> Guardrails:
        return Guardrails(dry_run=self.dry_run, auto_correct=self.auto_correct,
                          auto_correct_limit=self.auto_correct_limit, max_drift_ratio=self.max_drift_ratio,
                          tolerance=self.tolerance)


def _normalise(values: Mapping[str, object], labels: Mapping[str, str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in values.items():
        if value is None:
            out[key] = None
            continue
        label = labels.get(key, key)
        try:
            out[key] = _PARSERS[key](value, label)
        except ReconcilerError as exc:
            message = str(exc)
            if not message.startswith(label):
                message = f"{label}: {message}"
            raise type(exc)(message) from None
    from_id, to_id = out.get("from_id"), out.get("to_id")
    if isinstance(from_id, int) and isinstance(to_id, int) and from_id > to_id:
        raise InvalidOperationError(
            f"{labels.get('from_id', 'from_id')} {from_id} is greater than {labels.get('to_id', 'to_id')} {to_id}; "
            f"the range is inclusive and must not be empty")
    if out.get("customer_ids") is not None and (from_id is not None or to_id is not None):
        raise InvalidOperationError(
            f"give either {labels.get('customer_ids', 'customer_ids')} or a "
            f"{labels.get('from_id', 'from_id')}/{labels.get('to_id', 'to_id')} range, not both")
    return out

