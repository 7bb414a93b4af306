"""The incremental side of a run: deciding its mode, planning over the change feed, verifying its snapshot.

Invariant: a run's mode and reason are recorded when it is planned; an incremental run's chunks hold exactly
the customers touched since the verified point (plus those with unresolved tasks), read in the snapshot the
run will verify; a run moves the verified point only when it covered everyone (incremental, or full without a
range or ids), the feed was complete when it planned and is the same feed (same trigger oids) when it
finishes. The feed and the point themselves are :mod:`reconciler.change_feed`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Engine, text

from reconciler import change_feed, runs
from reconciler.chunks import Chunk, fetch_chunks

from .options import RunOptions

#: Incremental chunks are at least this big (below it a chunk's bookkeeping outweighs its comparison).
MIN_INCREMENTAL_CHUNK = 1_000


def incremental_chunk_size(customers: int, options: RunOptions) -> int:
    """Touched ids per chunk: at most ``chunk_size``, and small enough that every worker gets two chunks (a
    few thousand touched customers would otherwise be one chunk on one worker)."""
    spread = -(-customers // (2 * options.workers))
    return max(1, min(options.chunk_size, max(MIN_INCREMENTAL_CHUNK, spread)))


def plan_scope(conn: Connection, read_engine: Engine, run_id: int,
               options: RunOptions) -> tuple[list[Chunk], list[tuple[int, ...]] | None]:
    """Decide the mode, record it, and plan the chunks; incremental chunks come with their customer ids.

    The snapshot and the feed are read on ``read_engine`` (where the comparisons read) in one REPEATABLE
    READ transaction, before anything is compared."""
    restricted = options.customer_ids is not None or options.from_id is not None or options.to_id is not None
    state = change_feed.read_state(conn)
    decision = change_feed.decide_mode(options.mode, state, full_sweep_days=options.full_sweep_days,
                                       restricted=restricted)
    scope: change_feed.Scope | None = None
    with read_engine.connect() as reader:
        reader = reader.execution_options(isolation_level="REPEATABLE READ")
        with reader.begin():
            if decision.mode == "incremental" and state.point is not None:
                scope = change_feed.read_scope(reader, state.point, limit=change_feed.MAX_INCREMENTAL_CUSTOMERS)
                snapshot = scope.snapshot
                if scope.truncated or scope.too_many:
                    why = ("a TRUNCATE since the last verified point" if scope.truncated else
                           f"{scope.touched:,} customers touched since the last verified point (more than "
                           f"{change_feed.MAX_INCREMENTAL_CUSTOMERS:,}: a full run is cheaper)")
                    scope = None
                    decision = change_feed.ModeDecision("full", "incremental requested, ran full: " + why)
            else:
                snapshot = change_feed.take_snapshot(reader)
    # Only a run over everyone, with the feed complete, may verify its snapshot (see verify_snapshot).
    feed: dict[str, object] = {"snapshot": None if restricted or not state.complete else snapshot,
                               "trigger_oids": list(state.trigger_oids), "mode": decision.mode}
    chunk_ids: list[tuple[int, ...]] | None = None
    if scope is not None:
        chunk_ids = change_feed.split_ids(scope.customer_ids, incremental_chunk_size(len(scope.customer_ids), options))
        feed.update(touched=scope.touched, with_unresolved_tasks=scope.with_tasks)
        planned = [Chunk(index=i, first_id=g[0], last_id=g[-1], customers=len(g)) for i, g in enumerate(chunk_ids)]
    else:
        planned = fetch_chunks(conn, options.chunk_size, from_id=options.from_id, to_id=options.to_id,
                               customer_ids=options.customer_ids)
    runs.record_mode(conn, run_id, decision.mode, decision.reason,
                     verified_from=state.point if scope is not None else None)
    runs.merge_outcome(conn, run_id, {"feed": feed})
    return planned, chunk_ids


def ratio_population(engine: Engine, mode: str | None, customers_checked: int) -> int:
    """The customers ``max_drift_ratio`` is judged against: those compared, or for an incremental run every
    customer (the untouched ones are clean as of the verified point), so both modes halt on the same share."""
    if mode != "incremental":
        return customers_checked
    with engine.connect() as conn:
        return max(customers_checked, int(conn.execute(text("select count(*) from customers")).scalar_one()))


def verify_snapshot(conn: Connection, run_id: int, outcome: Mapping[str, Any]) -> None:
    """In the finishing transaction: make the run's snapshot the verified point when it may be (see the
    module's invariant; a feed reinstalled meanwhile may have missed writes), and prune what it covers."""
    feed: Mapping[str, Any] = outcome.get("feed") or {}
    snapshot = feed.get("snapshot")
    now = change_feed.read_state(conn)
    if snapshot and now.complete and list(now.trigger_oids) == list(feed.get("trigger_oids") or []):
        change_feed.advance(conn, snapshot, run_id, full=feed.get("mode") == "full")
        runs.record_verified(conn, run_id, snapshot)
