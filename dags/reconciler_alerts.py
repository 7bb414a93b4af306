"""The reconciler's Airflow notifier: every alert goes to the task log; when the Airflow connection
``reconciler_alerts`` exists it is also sent there (a webhook for ``http``/``https`` connections, a mail
for ``smtp``/``smtps``). Deciding what to say lives in :mod:`reconciler.alerts`; this class only looks up
the channel at run time (never at parse time) and delivers.

Use it as a failure callback (``on_failure_callback=ReconcilerNotifier()``: it builds a "run failed" alert
from the context) or call ``ReconcilerNotifier(alert).notify(context)`` from a task with a ready alert.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier
from reconciler_airflow import already_alerted, failure_reason, run_id_of

if TYPE_CHECKING:
    from reconciler.alerts import Alert, Channel

#: The Airflow connection alerts are delivered to, e.g.
#: ``AIRFLOW_CONN_RECONCILER_ALERTS='https://hooks.example.com/services/T0/B0/XYZ'`` or
#: ``AIRFLOW_CONN_RECONCILER_ALERTS='smtp://user:pw@mail.example.com:587?to=finance%40example.com&starttls=true'``.
ALERTS_CONN_ID = "reconciler_alerts"


def alert_channel(conn_id: str = ALERTS_CONN_ID) -> Channel | None:
    """The delivery channel configured in Airflow connection ``conn_id``, or None when there is none."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    from reconciler.alerts import channel_from_connection

    try:
        connection = Connection.get(conn_id)
    except AirflowNotFoundException:
        return None
    return channel_from_connection(connection.conn_type or "", host=connection.host, port=connection.port,
                                   login=connection.login, password=connection.password,
                                   schema=connection.schema, extra=connection.extra_dejson)


class ReconcilerNotifier(BaseNotifier):
    """Log an alert and deliver it to the ``reconciler_alerts`` connection when one is configured."""

    template_fields = ()

    def __init__(self, alert: Alert | None = None, *, conn_id: str = ALERTS_CONN_ID) -> None:
        super().__init__()
        self.alert = alert
        self.conn_id = conn_id

    def alert_for(self, context: Any) -> Alert | None:
        """The alert to send: the one given, else a failure alert for the failed task in ``context``."""
        if self.alert is not None:
            return self.alert
        if already_alerted(context):
            return None
        from reconciler.alerts import alert_for_failure

        reason = failure_reason(context)
        where, _, error = reason.partition(": ")
        return alert_for_failure(run_id=run_id_of(context), where=where, error=error)

    def notify(self, context: Any) -> None:
        from reconciler.alerts import deliver

        alert = self.alert_for(context)
        if alert is None:
            return
        self.log.warning("reconciler alert (%s): %s -- %s", alert.kind, alert.subject, alert.text)
        channel = alert_channel(self.conn_id)
        if channel is None:
            self.log.info("no Airflow connection %r: the alert was logged only", self.conn_id)
            return
        deliver(alert, channel)
        self.log.info("alert delivered to %s", channel.describe())
