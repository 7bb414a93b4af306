"""Demo data, generated: a reproducible ledger with drift of known kinds planted in it (pure: numbers in,
column arrays out; :mod:`reconciler.demo_copy` encodes them, :mod:`reconciler.demo` loads them).

Invariant: for every customer that is not recorded in ``reconciler.demo_plants``, the cached balance
equals the SUM of its ledger entries and every ``balance_after`` is the running sum; each planted
customer drifts by exactly the recorded ``drift`` (= stored balance - ledger sum), in one known way.

Same options and seed -> the same rows, ids included (the data is generated from PCG64 raw bits in
fixed batches of :data:`BATCH_CUSTOMERS`, never from the wall clock). Customers are ids ``1..N``;
each has ``M`` entries (a deposit first, then deposits and payments that never take the balance
below zero), one per day from :data:`BASE_TIME`, with reference ``demo-<customer>-<n>``.

What is planted (``drift = stored_balance - ledger_sum``; D is the planted magnitude):

* ``balance_written_around_ledger``: the cached balance moved by +/-D with no entry; the entries'
  chain is intact and the balance equals no ``balance_after`` of the customer. ``entry_id`` is null.
* ``missing_entry``: an entry of +/-D was applied to the balance (later ``balance_after`` include it)
  but never reached the ledger; drift = its amount. Never the last entry. ``entry_id`` is the entry
  right after the gap, whose ``balance_after`` reveals it.
* ``duplicated_entry``: an entry was inserted twice (same amount, kind, reference, ``balance_after``,
  the copy right after the original); drift = -amount. ``entry_id`` is the copy.
* ``sign_flipped_entry``: the balance applied +x but the ledger recorded -x; drift = 2x (D is even in
  cents). ``entry_id`` is that entry.
* ``unapplied_entry``: the last entry was recorded but never applied to the balance, which still equals
  the previous entry's ``balance_after``; drift = -amount. ``entry_id`` is that last entry.

About :data:`LARGE_SHARE_PERCENT` percent of the plants have D above 100.00 (the default auto-correct limit), the rest
below. Plants are unambiguous by construction, so :mod:`reconciler.explain` must name each one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np

from reconciler.errors import InvalidOperationError
from reconciler.vocabulary import Cause

DEFAULT_CUSTOMERS = 20_000
DEFAULT_ENTRIES_PER_CUSTOMER = 10
DEFAULT_DRIFT_RATE = Decimal("0.01")
DEFAULT_SEED = 42
#: Customers generated (and copied) together; part of the data's definition, so never change it
#: without accepting that every seed gives different data.
BATCH_CUSTOMERS = 10_000
#: Share of plants whose drift is above the default auto-correct limit (100.00).
LARGE_SHARE_PERCENT = 20
BASE_TIME = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
REFERENCE_PREFIX = "demo-"
MAX_CUSTOMERS = 999_999_999
MAX_ENTRIES_PER_CUSTOMER = 9_999

AROUND = Cause.BALANCE_WRITTEN_AROUND_LEDGER.value
MISSING = Cause.MISSING_ENTRY.value
DUPLICATED = Cause.DUPLICATED_ENTRY.value
SIGN_FLIPPED = Cause.SIGN_FLIPPED_ENTRY.value
UNAPPLIED = Cause.UNAPPLIED_ENTRY.value
PLANT_KINDS = (AROUND, MISSING, DUPLICATED, SIGN_FLIPPED, UNAPPLIED)


_PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_BASE_US = int((BASE_TIME - _PG_EPOCH).total_seconds()) * 1_000_000
_DAY_US = 86_400 * 1_000_000
ENTRY_KIND_NAMES = (b"deposit", b"payment")  # equal lengths: fixed-width binary rows
_DEPOSIT, _PAYMENT = 0, 1
REFERENCE_WIDTH = len(REFERENCE_PREFIX) + 9 + 1 + 4  # demo-<9 digits>-<4 digits>
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
COPY_TRAILER = b"\xff\xff"


@dataclass(frozen=True)
class SeedOptions:
    """What to seed. ``drift_rate`` is the share of customers that get a plant (0 to 1)."""

    customers: int = DEFAULT_CUSTOMERS
    entries_per_customer: int = DEFAULT_ENTRIES_PER_CUSTOMER
    drift_rate: Decimal = DEFAULT_DRIFT_RATE
    seed: int = DEFAULT_SEED
    reset: bool = False
    #: When set, entries are dated within ``created_span`` before this moment (a customer's k-th entry at k/m
    #: of the span) instead of one day apart from :data:`BASE_TIME` (the bench's "30 days of history" and
    #: "loaded within the last hour" ledgers).
    created_until: dt.datetime | None = None
    created_span: dt.timedelta = dt.timedelta(days=30)

    def __post_init__(self) -> None:
        if isinstance(self.customers, bool) or not 1 <= self.customers <= MAX_CUSTOMERS:
            raise InvalidOperationError(
                f"--customers must be between 1 and {MAX_CUSTOMERS}, got {self.customers}")
        if not 0 <= self.entries_per_customer <= MAX_ENTRIES_PER_CUSTOMER:
            raise InvalidOperationError(f"--entries-per-customer must be between 0 and "
                                        f"{MAX_ENTRIES_PER_CUSTOMER}, got {self.entries_per_customer}")
        if isinstance(self.drift_rate, float) or not isinstance(self.drift_rate, Decimal):
            raise InvalidOperationError(
                f"--drift-rate must be a Decimal (e.g. Decimal('0.01')), got {self.drift_rate!r}")
        if not self.drift_rate.is_finite() or not 0 <= self.drift_rate <= 1:
            raise InvalidOperationError(f"--drift-rate must be between 0 and 1, got {self.drift_rate}")
        if not 0 <= self.seed < 2**63:
            raise InvalidOperationError(f"--seed must be between 0 and {2**63 - 1}, got {self.seed}")


@dataclass(frozen=True)
class Plant:
    """One planted drift: which customer, what kind, by how much, and the entry that shows it."""

    customer_id: int
    kind: str
    drift: Decimal
    entry_id: int | None
    seed: int

    def to_json(self) -> dict[str, object]:
        return {"customer_id": self.customer_id, "kind": self.kind, "drift": str(self.drift),
                "entry_id": self.entry_id, "seed": self.seed}



@dataclass(frozen=True)
class Batch:
    """Generated rows for customers ``first_customer .. first_customer + len(balances) - 1``: column arrays
    (money in cents), ready to encode. Entry ids are ``first_entry_id ..`` in row order."""

    first_customer: int
    first_entry_id: int
    balances: np.ndarray  # int64 cents, one per customer
    updated_at: np.ndarray  # int64 microseconds since 2000-01-01, one per customer
    entry_customer: np.ndarray  # int64
    entry_amount: np.ndarray  # int64 cents
    entry_kind: np.ndarray  # int8 index into ENTRY_KIND_NAMES
    entry_ref_number: np.ndarray  # int64, the n in demo-<customer>-<n>
    entry_balance_after: np.ndarray  # int64 cents
    entry_created_at: np.ndarray  # int64 microseconds since 2000-01-01
    plants: tuple[Plant, ...] = field(default=())

    @property
    def entries(self) -> int:
        return len(self.entry_customer)


# --------------------------------------------------------------------------------------------------
# Generation (pure: numbers in, arrays out)


def _rng(seed: int, batch_index: int) -> np.random.PCG64:
    # PCG64 and SeedSequence are fixed algorithms; values are derived from raw bits by our own
    # arithmetic, so the data does not depend on numpy's distribution code.
    return np.random.PCG64(np.random.SeedSequence(entropy=seed, spawn_key=(batch_index,)))


def _raw(bits: np.random.PCG64, shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray(bits.random_raw(int(np.prod(shape))), dtype=np.uint64).reshape(shape)


def _uniform(raw: np.ndarray, low: int, high: int) -> np.ndarray:
    """Integers in [low, high] from raw 64-bit values (the modulo bias is below 1e-13)."""
    return (raw % np.uint64(high - low + 1)).astype(np.int64) + low


def honest_amounts(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Amounts (cents) and kinds for ``raw.shape[:2]`` customers x entries: a deposit of 10.00-2000.00
    first, then payments of 1.00-500.00 (about 55%) where the balance allows, deposits otherwise."""
    customers, entries = raw.shape[0], raw.shape[1]
    amounts = np.empty((customers, entries), dtype=np.int64)
    kinds = np.empty((customers, entries), dtype=np.int8)
    balance = np.zeros(customers, dtype=np.int64)
    for j in range(entries):
        if j == 0:
            magnitude = _uniform(raw[:, j, 0], 1_000, 200_000)
            pay = np.zeros(customers, dtype=bool)
        else:
            magnitude = _uniform(raw[:, j, 0], 100, 50_000)
            pay = (_uniform(raw[:, j, 1], 0, 99) < 55) & (balance >= magnitude)
        amounts[:, j] = np.where(pay, -magnitude, magnitude)
        kinds[:, j] = np.where(pay, _PAYMENT, _DEPOSIT)
        balance += amounts[:, j]
    return amounts, kinds


def feasible_kinds(entries_per_customer: int) -> tuple[str, ...]:
    """The plant kinds possible with this many entries per customer (a missing or unapplied entry
    needs an entry after or before it)."""
    if entries_per_customer == 0:
        return (AROUND,)
    if entries_per_customer == 1:
        return (AROUND, DUPLICATED, SIGN_FLIPPED)
    return PLANT_KINDS


@dataclass(frozen=True)
class _Row:
    amount: int
    kind: int
    ref: int
    balance_after: int
    day: int


def _chain(amounts: Sequence[int], kinds: Sequence[int]) -> list[_Row]:
    rows, balance = [], 0
    for j, (amount, kind) in enumerate(zip(amounts, kinds, strict=True)):
        balance += amount
        rows.append(_Row(amount, kind, j + 1, balance, j))
    return rows


def _with_planted_amount(amounts: list[int], kinds: list[int], k: int, magnitude: int, negative: bool) -> None:
    """Set entry k to +/-magnitude (a payment only if the balance allows it), then keep every later
    payment affordable by turning it into a deposit where needed."""
    before = sum(amounts[:k])
    pay = negative and before >= magnitude
    amounts[k], kinds[k] = (-magnitude, _PAYMENT) if pay else (magnitude, _DEPOSIT)
    balance = before + amounts[k]
    for j in range(k + 1, len(amounts)):
        if amounts[j] < 0 and balance + amounts[j] < 0:
            amounts[j], kinds[j] = -amounts[j], _DEPOSIT
        balance += amounts[j]


def plant_customer(kind: str, amounts: list[int], kinds: list[int], magnitude: int, position: int,
                   negative: bool) -> tuple[list[_Row], int, int, int | None]:
    """Plant ``kind`` into one customer's honest history (pure).

    Returns (rows in ledger order, stored balance in cents, drift in cents, index of the evidence
    row or None). ``position`` picks the entry (taken modulo the valid positions).
    """
    n = len(amounts)
    amounts, kinds = list(amounts), list(kinds)
    if kind == AROUND:
        rows = _chain(amounts, kinds)
        final = rows[-1].balance_after if rows else 0
        earlier = {row.balance_after for row in rows[:-1]}
        sign = -1 if negative and final >= magnitude else 1
        delta = sign * magnitude
        while final + delta in earlier or delta == 0:
            delta += sign
        return rows, final + delta, delta, None
    if kind == MISSING:
        k = position % (n - 1)
        while True:
            planted_amounts, planted_kinds = list(amounts), list(kinds)
            _with_planted_amount(planted_amounts, planted_kinds, k, magnitude, negative)
            # The sign-flip rule would claim the gap if the next entry were exactly -amount/2.
            if 2 * planted_amounts[k + 1] != -planted_amounts[k]:
                break
            magnitude += 1
        rows = _chain(planted_amounts, planted_kinds)
        drift = rows[k].amount
        del rows[k]
        return rows, rows[-1].balance_after, drift, k
    if kind == DUPLICATED:
        k = position % n
        _with_planted_amount(amounts, kinds, k, magnitude, negative)
        rows = _chain(amounts, kinds)
        rows.insert(k + 1, rows[k])
        return rows, rows[-1].balance_after, -rows[k].amount, k + 1
    if kind == SIGN_FLIPPED:
        k = position % n
        half = max(magnitude // 2, 1)
        _with_planted_amount(amounts, kinds, k, half, negative)
        rows = _chain(amounts, kinds)
        true = rows[k]
        rows[k] = _Row(-true.amount, true.kind, true.ref, true.balance_after, true.day)
        return rows, rows[-1].balance_after, 2 * true.amount, k
    if kind == UNAPPLIED:
        _with_planted_amount(amounts, kinds, n - 1, magnitude, negative)
        rows = _chain(amounts, kinds)
        return rows, rows[-2].balance_after, -rows[-1].amount, n - 1
    raise InvalidOperationError(f"unknown plant kind {kind!r}; expected one of {', '.join(PLANT_KINDS)}")


def generate_batch(options: SeedOptions, batch_index: int, first_entry_id: int) -> Batch:
    """Generate batch ``batch_index`` (pure: the same arguments give the same arrays)."""
    first_customer = batch_index * BATCH_CUSTOMERS + 1
    count = min(BATCH_CUSTOMERS, options.customers - first_customer + 1)
    m = options.entries_per_customer
    bits = _rng(options.seed, batch_index)
    raw = _raw(bits, (count, m, 2))
    plant_raw = _raw(bits, (count, 5))
    amounts, kinds = honest_amounts(raw)
    customer_ids = np.arange(first_customer, first_customer + count, dtype=np.int64)
    rate_ppm = int(options.drift_rate * 1_000_000)
    planted = _uniform(plant_raw[:, 0], 0, 999_999) < rate_ppm
    kinds_available = feasible_kinds(m)
    kind_index = _uniform(plant_raw[:, 1], 0, len(kinds_available) - 1)
    large = _uniform(plant_raw[:, 2], 0, 99) < LARGE_SHARE_PERCENT
    magnitude = np.where(large, _uniform(plant_raw[:, 3], 10_002, 90_000), _uniform(plant_raw[:, 3], 5, 9_999))
    position = _uniform(plant_raw[:, 4], 0, 1 << 30)
    negative = (plant_raw[:, 4] >> np.uint64(40)) % np.uint64(2) == 1

    balances = amounts.sum(axis=1) if m else np.zeros(count, dtype=np.int64)
    honest = ~planted
    h_count = int(honest.sum())
    cust_parts = [np.repeat(customer_ids[honest], m)]
    amount_parts = [amounts[honest].reshape(-1)]
    kind_parts = [kinds[honest].reshape(-1)]
    ref_parts = [np.tile(np.arange(1, m + 1, dtype=np.int64), h_count)]
    after_parts = [np.cumsum(amounts[honest], axis=1).reshape(-1)]
    day_parts = [np.tile(np.arange(m, dtype=np.int64), h_count)]
    order_parts = [np.tile(np.arange(m, dtype=np.int64), h_count)]

    planted_info: list[tuple[int, str, int, int | None]] = []  # customer, kind, drift, evidence position
    for i in np.flatnonzero(planted):
        kind = kinds_available[int(kind_index[i])]
        rows, stored, drift, evidence = plant_customer(
            kind, amounts[i].tolist(), kinds[i].tolist(), int(magnitude[i]), int(position[i]), bool(negative[i]))
        cid = int(customer_ids[i])
        balances[i] = stored
        cust_parts.append(np.full(len(rows), cid, dtype=np.int64))
        amount_parts.append(np.array([r.amount for r in rows], dtype=np.int64))
        kind_parts.append(np.array([r.kind for r in rows], dtype=np.int8))
        ref_parts.append(np.array([r.ref for r in rows], dtype=np.int64))
        after_parts.append(np.array([r.balance_after for r in rows], dtype=np.int64))
        day_parts.append(np.array([r.day for r in rows], dtype=np.int64))
        order_parts.append(np.arange(len(rows), dtype=np.int64))
        planted_info.append((cid, kind, drift, evidence))

    entry_customer = np.concatenate(cust_parts)
    order = np.lexsort((np.concatenate(order_parts), entry_customer))
    entry_customer = entry_customer[order]
    days = np.concatenate(day_parts)[order]
    if options.created_until is None:
        seconds_of_day = (entry_customer % 86_400) * 1_000_000
        created_at = _BASE_US + days * _DAY_US + seconds_of_day
    else:
        end_us = int((options.created_until - _PG_EPOCH).total_seconds() * 1_000_000)
        span_us = int(options.created_span.total_seconds() * 1_000_000)
        step = span_us // (m + 2)
        created_at = (end_us - span_us + np.minimum(days, m) * step
                      + (entry_customer % 1_000) * (step // 1_000))

    # Plants' evidence rows: the k-th row of that customer, located after sorting.
    starts = np.searchsorted(entry_customer, [cid for cid, *_ in planted_info])
    plants = tuple(
        Plant(cid, kind, Decimal(drift).scaleb(-2),
              None if evidence is None else first_entry_id + int(start) + evidence, options.seed)
        for (cid, kind, drift, evidence), start in zip(planted_info, starts, strict=True))

    last_day = np.full(count, max(m - 1, 0), dtype=np.int64)
    return Batch(
        first_customer=first_customer, first_entry_id=first_entry_id, balances=balances.astype(np.int64),
        updated_at=_BASE_US + last_day * _DAY_US + (customer_ids % 86_400) * 1_000_000,
        entry_customer=entry_customer, entry_amount=np.concatenate(amount_parts)[order],
        entry_kind=np.concatenate(kind_parts)[order], entry_ref_number=np.concatenate(ref_parts)[order],
        entry_balance_after=np.concatenate(after_parts)[order], entry_created_at=created_at, plants=plants)


def batch_count(customers: int) -> int:
    return -(-customers // BATCH_CUSTOMERS)

