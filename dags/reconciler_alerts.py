"""Alert delivery for the reconciler DAGs through Airflow's provider notifiers.

What to say is decided in :mod:`reconciler.alerts` (pure); this module only adds the Airflow links (the DAG
run's page and the log of the step that matters) and hands the message to the notifiers of the channels
that are configured, looked up at run time (never at parse time):

- mail: :class:`~airflow.providers.smtp.notifications.smtp.SmtpNotifier` on the SMTP connection
  ``reconciler_smtp``. Host, port, login, and the extras ``from_email``, ``disable_tls``, ``disable_ssl``,
  ``timeout`` and ``retry_limit`` are the standard SMTP connection fields the UI shows; the recipients are
  the extra ``to`` (comma-separated) or else ``RECONCILER_ALERT_EMAIL_TO``.
- chat: :class:`~airflow.providers.http.notifications.http.HttpNotifier` POSTs the alert's JSON (``text``
  first, as Slack, Mattermost and Rocket.Chat incoming webhooks read it, then the structured facts) to the
  HTTP connection ``reconciler_alerts`` whose host is the full webhook URL, e.g.
  ``{"conn_type": "http", "host": "https://hooks.slack.com/services/T0/B0/XYZ"}``.

Every alert also goes to the task log. A channel that fails does not stop the others; the step then fails
without a retry (a retry would send the alert twice through the channels that worked).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.sdk import BaseNotifier
from airflow.sdk.exceptions import AirflowFailException
from reconciler_airflow import already_alerted, failure_reason, run_id_of

if TYPE_CHECKING:
    from reconciler.alerts import Alert

#: The HTTP connection of the chat webhook (HttpNotifier).
ALERTS_CONN_ID = "reconciler_alerts"
#: The SMTP connection for mail alerts (SmtpNotifier).
SMTP_CONN_ID = "reconciler_smtp"
#: Recipients when the SMTP connection's extra has no ``to``.
RECIPIENTS_ENV = "RECONCILER_ALERT_EMAIL_TO"


def _connection(conn_id: str) -> Any | None:
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return Connection.get(conn_id)
    except AirflowNotFoundException:
        return None


def _recipients(connection: Any) -> list[str]:
    raw = str((connection.extra_dejson or {}).get("to") or os.environ.get(RECIPIENTS_ENV, ""))
    return [part.strip() for part in raw.split(",") if part.strip()]


def notifiers_for(alert: Alert) -> list[tuple[str, BaseNotifier]]:
    """The provider notifiers that deliver ``alert``, one per configured channel, each with its label."""
    out: list[tuple[str, BaseNotifier]] = []
    smtp = _connection(SMTP_CONN_ID)
    if smtp is not None:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        to = _recipients(smtp)
        if not to:
            raise AirflowFailException(f"the SMTP connection {SMTP_CONN_ID!r} names no recipient: set its extra "
                                       f'{{"to": "finance@example.com"}} or {RECIPIENTS_ENV}')
        out.append((f"mail to {', '.join(to)}", SmtpNotifier(
            to=to, subject=alert.email_subject(), html_content=alert.email_html(), smtp_conn_id=SMTP_CONN_ID)))
    if _connection(ALERTS_CONN_ID) is not None:
        from airflow.providers.http.notifications.http import HttpNotifier

        out.append((f"webhook {ALERTS_CONN_ID}", HttpNotifier(
            http_conn_id=ALERTS_CONN_ID, json=alert.to_json(),
            headers={"Content-Type": "application/json", "User-Agent": "reconciler"})))
    return out


def airflow_base_url() -> str:
    from airflow.configuration import conf

    return str(conf.get("api", "base_url", fallback="http://localhost:8080/")).rstrip("/")


def run_url(dag_id: str, run_id: str) -> str:
    """The DAG run's page in the Airflow UI."""
    return f"{airflow_base_url()}/dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}"


def task_log_url(dag_id: str, run_id: str, task_id: str, map_index: int | None = None) -> str:
    """The log page of one task instance in the Airflow UI."""
    mapped = f"/mapped/{map_index}" if map_index is not None and map_index >= 0 else ""
    return f"{run_url(dag_id, run_id)}/tasks/{quote(task_id)}{mapped}"


def failed_task_instances(context: Mapping[str, Any]) -> list[tuple[str, int]]:
    """``(task_id, map_index)`` of the task instances of this DAG run that failed (not upstream_failed)."""
    ti = context["ti"]
    crumbs = ti.get_task_breadcrumbs(dag_id=ti.dag_id, run_id=ti.run_id)
    return [(str(c["task_id"]), int(c["map_index"])) for c in crumbs if str(c.get("state")) == "failed"]


def links_for(context: Mapping[str, Any], *, failed: Sequence[tuple[str, int]] = (),
              report: str | None = None) -> dict[str, str | None]:
    """The alert's links: this DAG run, the log of the first failed task (else of this task), the report."""
    ti = context["ti"]
    log = task_log_url(ti.dag_id, ti.run_id, *failed[0]) if failed else getattr(ti, "log_url", None)
    return {"run": run_url(ti.dag_id, ti.run_id), "log": log, "report": report}


def deliver_alert(alert: Alert, context: Mapping[str, Any], log: Any) -> list[str]:
    """Log ``alert`` and send it through every configured channel; return the channels that took it.

    Raises :class:`AirflowFailException` (no retry) after trying them all when one of them failed."""
    log.warning("reconciler alert (%s): %s", alert.kind, alert.message())
    delivered: list[str] = []
    errors: list[str] = []
    for label, notifier in notifiers_for(alert):
        try:
            # notify(), not __call__: the text is final, Jinja must not render braces in an error message.
            notifier.notify(dict(context))  # type: ignore[arg-type]
        except Exception as exc:
            log.error("alert not delivered by %s: %s: %s", label, type(exc).__name__, exc)
            errors.append(f"{label}: {type(exc).__name__}: {exc}")
        else:
            log.info("alert delivered by %s", label)
            delivered.append(label)
    if not delivered and not errors:
        log.info("no alert channel configured (connections %r, %r): the alert was logged only",
                 SMTP_CONN_ID, ALERTS_CONN_ID)
    if errors:
        raise AirflowFailException(f"alert {alert.subject!r} not delivered by {'; '.join(errors)}"
                                   + (f" (delivered by {', '.join(delivered)})" if delivered else ""))
    return delivered


class ReconcilerNotifier(BaseNotifier):
    """Failure callback of a single-task DAG (the watchdog): one "failed" alert for the failed task, with its
    links, through the configured channels. Not for mapped DAGs: the reconciliation DAG alerts once per run
    from its ``send_alerts`` step instead."""

    template_fields = ()

    def notify(self, context: Any) -> None:
        if already_alerted(context):
            return
        from reconciler.alerts import alert_for_failure

        where, _, error = failure_reason(context).partition(": ")
        alert = alert_for_failure(run_id=run_id_of(context), where=where, error=error)
        ti = context["ti"]
        alert = alert.with_links(run=run_url(ti.dag_id, ti.run_id),
                                 log=task_log_url(ti.dag_id, ti.run_id, ti.task_id, getattr(ti, "map_index", -1)))
        deliver_alert(alert, context, self.log)
