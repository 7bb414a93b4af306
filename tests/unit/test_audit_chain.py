"""The audit chain's verification, pure: every edit, removal, reordering or cut-off end is named."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json

import pytest

from reconciler.audit import GENESIS_HASH, AuditEvent, AuditRow, Head, check_chain, format_at, link_hash
from reconciler.errors import InvalidOperationError

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def chain(n: int) -> list[AuditRow]:
    """``n`` well-formed rows, built the way the database builds them."""
    rows, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        at = T0 + dt.timedelta(seconds=seq)
        body = json.dumps({"seq": seq, "at": format_at(at), "kind": "task", "actor": "run 1",
                           "data": {"task_id": seq}})
        row = AuditRow(seq, at, "task", "run 1", body, prev, link_hash(prev, body))
        rows.append(row)
        prev = row.hash
    return rows


def head_of(rows: list[AuditRow]) -> Head:
    return Head(len(rows), rows[-1].hash if rows else GENESIS_HASH)


def test_link_hash_is_sha256_of_prev_hash_and_body() -> None:
    """hash = sha256(prev_hash || body), hex over UTF-8: anyone can recompute it with any SHA-256 tool."""
    assert link_hash("ab", "{}") == hashlib.sha256(b"ab{}").hexdigest()


def test_an_intact_chain_reports_its_length_and_head() -> None:
    """A well-formed chain is intact; its length and head hash are the last row's."""
    rows = chain(5)
    report = check_chain(rows, head_of(rows))
    assert (report.intact, report.length, report.head_hash) == (True, 5, rows[-1].hash)


def test_an_empty_chain_is_intact_at_the_genesis_hash() -> None:
    """No rows: intact, length 0, head hash 64 zeros."""
    report = check_chain([], Head(0, GENESIS_HASH))
    assert (report.intact, report.length, report.head_hash) == (True, 0, GENESIS_HASH)


def test_an_edited_body_names_that_row_with_expected_and_actual_hash() -> None:
    """Editing a row's body (a changed amount) breaks that row: the recomputed hash differs from the stored."""
    rows = chain(5)
    edited = rows[2].body.replace('"task_id": 3', '"task_id": 33')
    rows[2] = dataclasses.replace(rows[2], body=edited)
    broken = check_chain(rows, head_of(rows)).broken
    assert broken is not None and broken.seq == 3
    assert broken.expected == link_hash(rows[2].prev_hash, edited) and broken.actual == rows[2].hash


def test_a_rehashed_edit_is_caught_by_the_next_row() -> None:
    """An editor who also recomputes the edited row's hash breaks the next row's prev_hash link."""
    rows = chain(5)
    body = rows[1].body.replace("run 1", "someone else")
    rows[1] = dataclasses.replace(rows[1], body=body, hash=link_hash(rows[1].prev_hash, body))
    broken = check_chain(rows, head_of(chain(5))).broken
    assert broken is not None and broken.seq == 2  # its columns no longer agree with its body
    rows[1] = dataclasses.replace(rows[1], actor="someone else")
    broken = check_chain(rows, head_of(chain(5))).broken
    assert broken is not None and (broken.seq, broken.actual) == (3, chain(5)[1].hash)
    assert broken.expected == rows[1].hash


def test_a_deleted_row_is_named_by_the_row_after_it() -> None:
    """Removing row 3 breaks row 4: it says row 3 is missing."""
    rows = chain(5)
    del rows[2]
    broken = check_chain(rows, head_of(rows)).broken
    assert broken is not None and broken.seq == 4 and "row 3 is missing" in broken.problem


def test_rows_cut_off_the_end_are_named_by_the_head() -> None:
    """Deleting the last rows leaves a chain that links, but the recorded head says where it ended."""
    rows = chain(5)
    broken = check_chain(rows[:3], head_of(rows)).broken
    assert broken is not None and broken.seq == 5 and broken.expected == rows[-1].hash


def test_a_column_changed_without_its_body_is_named() -> None:
    """A changed kind column (not the hashed body) is named: columns must agree with what was hashed."""
    rows = chain(3)
    rows[0] = dataclasses.replace(rows[0], kind="approval")
    broken = check_chain(rows, head_of(rows)).broken
    assert broken is not None and broken.seq == 1 and "kind" in broken.problem


def test_an_event_needs_a_known_kind_and_an_actor() -> None:
    """Bad events are refused before they reach the database."""
    with pytest.raises(InvalidOperationError):
        AuditEvent("payment", "me").to_json()
    with pytest.raises(InvalidOperationError):
        AuditEvent("guard", " ").to_json()
    assert AuditEvent("guard", "ops", {"mode": "enforce"}).to_json()["data"] == {"mode": "enforce"}
