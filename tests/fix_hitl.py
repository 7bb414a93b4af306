"""Answering the DAG's Human-in-the-loop step from a test while ``dag.test()`` waits for it: a thread polls the
metadata database until ``review_corrections`` is parked in ``awaiting_input`` and then answers through the
REST API's own route function (``PATCH .../hitlDetails``, in process, as a named Airflow user), or lets the
response timeout pass and runs the scheduler's timeout sweep."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

TASK_ID = "review_corrections"


@dataclass
class Answer:
    """One answer: ``user`` None means "let the timeout pass"."""

    user: str | None
    chosen: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Responder:
    """Answers each parked review in turn; records what the form showed and what the API said."""

    answers: list[Answer] = field(default_factory=list)
    seen: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def answer(self, user: str | None, chosen: str = "Reject", **params: Any) -> None:
        self.answers.append(Answer(user, [chosen], {"task_ids": [], "note": "", **params}))


def _parked() -> Any | None:
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select
    from sqlalchemy.orm import joinedload

    with create_session() as session:
        ti = session.scalars(select(TI).options(joinedload(TI.hitl_detail))
                             .where(TI.task_id == TASK_ID, TI.state == TaskInstanceState.AWAITING_INPUT)).first()
        if ti is None or ti.hitl_detail is None:
            return None
        return {"dag_id": ti.dag_id, "run_id": ti.run_id, "id": ti.id, "subject": ti.hitl_detail.subject,
                "body": ti.hitl_detail.body, "assigned_users": ti.hitl_detail.assigned_users,
                "options": ti.hitl_detail.options}


def respond(parked: dict[str, Any], answer: Answer) -> None:
    """PATCH the HITL detail as ``answer.user`` through the core API's route function."""
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
    from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
    from airflow.utils.session import create_session

    with create_session() as session:
        update_hitl_detail(dag_id=parked["dag_id"], dag_run_id=parked["run_id"], task_id=TASK_ID,
                           update_hitl_detail_payload=UpdateHITLDetailPayload(chosen_options=answer.chosen,
                                                                              params_input=answer.params),
                           user=SimpleAuthManagerUser(username=str(answer.user), role="admin"), session=session,
                           map_index=-1)


def time_out(parked: dict[str, Any]) -> None:
    """Move the response deadline into the past and run the scheduler's awaiting_input timeout sweep."""
    import logging

    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = session.get(TI, parked["id"])
        assert ti is not None and ti.trigger_timeout is not None, "the review has no response timeout"
        ti.trigger_timeout = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    sweeper = type("Sweeper", (), {"log": logging.getLogger("sweep")})()
    SchedulerJobRunner.check_awaiting_input_timeouts(sweeper)  # type: ignore[arg-type]


def _serve(responder: Responder) -> None:
    """Answer each parked review with the next queued answer; an error is recorded and, should answering keep
    failing for a minute, the review is timed out so that ``dag.test()`` cannot hang the test session."""
    failing_since: float | None = None
    while not responder.stop.is_set():
        try:
            parked = _parked() if responder.answers else None
            if parked is None:
                time.sleep(0.3)
                continue
            answer = responder.answers[0]
            if answer.user is None:
                time_out(parked)
            else:
                respond(parked, answer)
            responder.answers.pop(0)
            responder.seen.append(parked)
            failing_since = None
        except Exception as exc:  # e.g. 403 for an unassigned user: that answer is spent, the next one follows
            responder.errors.append(f"{type(exc).__name__}: {getattr(exc, 'detail', exc)}")
            if getattr(exc, "status_code", None) == 403:
                responder.answers.pop(0)
                continue
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since > 60:
                responder.answers.clear()
                with contextlib.suppress(Exception):
                    parked = _parked()
                    if parked is not None:
                        time_out(parked)
            time.sleep(0.5)


@pytest.fixture
def reviewer() -> Iterator[Responder]:
    """Queue answers with ``reviewer.answer(user, option, note=..., task_ids=[...])`` before ``dag.test()``."""
    responder = Responder()
    thread = threading.Thread(target=_serve, args=(responder,), daemon=True)
    thread.start()
    yield responder
    responder.stop.set()
    thread.join(timeout=10)
