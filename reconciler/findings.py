"""Findings staged by a run in ``reconciler.findings``: one row per drifting customer, keyed (run_id, customer_id).

Invariant: this module is the ONE writer of ``reconciler.findings``. Staging is an upsert, so comparing a
chunk again leaves one row per customer with the latest values; nothing acts on a drift before it is staged
here (tasks are opened from these rows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

from sqlalchemy import Connection, text
from sqlalchemy.dialects.postgresql import insert

from reconciler.compare import Drift
from reconciler.explain import Explanation
from reconciler.report_model import DriftLine
from reconciler.schema import findings


def stage_findings(conn: Connection, run_id: int, chunk_index: int, drifts: Sequence[Drift],
                   explanations: Mapping[int, Explanation]) -> None:
    """Upsert one finding per drift (with its explanation as cause and evidence)."""
    if not drifts:
        return
    staged = []
    for drift in drifts:
        explanation = explanations.get(drift.customer_id)
        evidence: dict[str, object] | None = None
        if explanation is not None:
            evidence = {**dict(explanation.evidence), "summary": explanation.summary}
        staged.append({"run_id": run_id, "customer_id": drift.customer_id, "chunk_index": chunk_index,
                       "stored_balance": drift.stored_balance, "ledger_sum": drift.ledger_sum,
                       "drift": drift.drift, "cause": explanation.cause if explanation else None,
                       "evidence": evidence})
    statement = insert(findings)
    conn.execute(statement.on_conflict_do_update(
        index_elements=[findings.c.run_id, findings.c.customer_id],
        set_={name: statement.excluded[name] for name in
              ("chunk_index", "stored_balance", "ledger_sum", "drift", "cause", "evidence", "found_at")},
    ), staged)


def top_drifts(conn: Connection, run_id: int, limit: int = 10) -> list[DriftLine]:
    """The run's largest drifts (by absolute value) with their explanations and task status."""
    rows = conn.execute(text("""
        select f.customer_id, f.stored_balance, f.ledger_sum, f.drift, f.cause, f.evidence ->> 'summary' as summary,
               t.id as task_id, t.status as task_status
        from reconciler.findings f
        left join lateral (select id, status from reconciler.tasks t where t.customer_id = f.customer_id
                           order by t.id desc limit 1) t on true
        where f.run_id = :run order by abs(f.drift) desc, f.customer_id limit :limit"""),
                        {"run": run_id, "limit": limit}).all()
    return [DriftLine(int(r.customer_id), Decimal(r.stored_balance), Decimal(r.ledger_sum), Decimal(r.drift),
                      r.cause, r.summary, r.task_id, r.task_status) for r in rows]
