"""Binary COPY encoding of generated demo batches (pure). Every field has a fixed width, so a row is one
numpy record; numeric: ndigits=5 base-10000 digits, weight=3, sign, dscale=2 cover all of numeric(18,2), and
PostgreSQL strips the leading and trailing zero digits on receipt."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from reconciler.demo_generator import (
    ENTRY_KIND_NAMES,
    REFERENCE_PREFIX,
    REFERENCE_WIDTH,
    Batch,
    Plant,
    SeedOptions,
    batch_count,
    generate_batch,
)

COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
COPY_TRAILER = b"\xff\xff"

_NUMERIC = [("len", ">i4"), ("ndigits", ">i2"), ("weight", ">i2"), ("sign", ">u2"), ("dscale", ">i2"),
            ("digits", ">i2", (5,))]
_CUSTOMER_ROW = np.dtype([("nfields", ">i2"), ("id_len", ">i4"), ("id", ">i8"), ("balance", _NUMERIC),
                          ("ts_len", ">i4"), ("ts", ">i8")])
_ENTRY_ROW = np.dtype([("nfields", ">i2"), ("id_len", ">i4"), ("id", ">i8"), ("cid_len", ">i4"), ("cid", ">i8"),
                       ("amount", _NUMERIC), ("kind_len", ">i4"), ("kind", "S7"),
                       ("ref_len", ">i4"), ("ref", "u1", (REFERENCE_WIDTH,)),
                       ("after", _NUMERIC), ("ts_len", ">i4"), ("ts", ">i8")])


def _put_numeric(target: np.ndarray, cents: np.ndarray) -> None:
    magnitude = np.abs(cents)
    whole, fraction = magnitude // 100, magnitude % 100
    target["len"] = 18
    target["ndigits"] = 5
    target["weight"] = 3
    target["sign"] = np.where(cents < 0, 0x4000, 0)
    target["dscale"] = 2
    digits = np.stack([whole // 10**12, (whole // 10**8) % 10_000, (whole // 10**4) % 10_000, whole % 10_000,
                       fraction * 100], axis=1)
    target["digits"] = digits


def encode_customers(batch: Batch) -> bytes:
    """The batch's customers as binary COPY data (without signature and trailer)."""
    rows = np.empty(len(batch.balances), dtype=_CUSTOMER_ROW)
    rows["nfields"] = 3
    rows["id_len"] = 8
    rows["id"] = np.arange(batch.first_customer, batch.first_customer + len(batch.balances), dtype=np.int64)
    _put_numeric(rows["balance"], batch.balances)
    rows["ts_len"] = 8
    rows["ts"] = batch.updated_at
    return rows.tobytes()


def _references(customers: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    out = np.empty((len(customers), REFERENCE_WIDTH), dtype=np.uint8)
    out[:, : len(REFERENCE_PREFIX)] = np.frombuffer(REFERENCE_PREFIX.encode(), dtype=np.uint8)
    start = len(REFERENCE_PREFIX)
    for p in range(9):
        out[:, start + p] = (customers // 10 ** (8 - p)) % 10 + 48
    out[:, start + 9] = ord("-")
    for p in range(4):
        out[:, start + 10 + p] = (numbers // 10 ** (3 - p)) % 10 + 48
    return out


def reference(customer_id: int, number: int) -> str:
    """The demo reference of a customer's n-th generated entry (as :func:`encode_entries` writes it)."""
    return f"{REFERENCE_PREFIX}{customer_id:09d}-{number:04d}"


def encode_entries(batch: Batch) -> bytes:
    """The batch's entries as binary COPY data (without signature and trailer)."""
    rows = np.empty(batch.entries, dtype=_ENTRY_ROW)
    rows["nfields"] = 7
    rows["id_len"] = 8
    rows["id"] = np.arange(batch.first_entry_id, batch.first_entry_id + batch.entries, dtype=np.int64)
    rows["cid_len"] = 8
    rows["cid"] = batch.entry_customer
    _put_numeric(rows["amount"], batch.entry_amount)
    rows["kind_len"] = 7
    rows["kind"] = np.array(ENTRY_KIND_NAMES, dtype="S7")[batch.entry_kind]
    rows["ref_len"] = REFERENCE_WIDTH
    rows["ref"] = _references(batch.entry_customer, batch.entry_ref_number)
    _put_numeric(rows["after"], batch.entry_balance_after)
    rows["ts_len"] = 8
    rows["ts"] = batch.entry_created_at
    return rows.tobytes()


@dataclass(frozen=True)
class EncodedBatch:
    """A batch ready for COPY: only what the loader needs, so the arrays can be freed early."""

    last_customer: int
    entries: int
    plants: tuple[Plant, ...]
    customer_rows: bytes
    entry_rows: bytes


def generate(options: SeedOptions) -> Iterator[EncodedBatch]:
    """Every batch in order, encoded."""
    next_entry_id = 1
    for index in range(batch_count(options.customers)):
        batch = generate_batch(options, index, next_entry_id)
        next_entry_id += batch.entries
        yield EncodedBatch(batch.first_customer + len(batch.balances) - 1, batch.entries, batch.plants,
                           encode_customers(batch), encode_entries(batch))

