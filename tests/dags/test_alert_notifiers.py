"""Alert delivery through Airflow's provider notifiers against real local servers: SmtpNotifier on the
``reconciler_smtp`` connection (standard SMTP fields: from_email, disable_tls, disable_ssl, retries) and
HttpNotifier on the ``reconciler_alerts`` webhook connection; a failing channel does not stop the other."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import socket
from typing import Any

import pytest

from reconciler.alerts import alert_for_failure
from tests.fix_http import SMTPServer, Webhook, http_connection, smtp_connection

log = logging.getLogger("test")


def _alert() -> Any:
    return alert_for_failure(run_id=9, where="apply_corrections", error="lock timeout {{ not jinja }}").with_links(
        run="http://airflow.test/dags/ledger_reconciliation/runs/manual__1",
        log="http://airflow.test/dags/ledger_reconciliation/runs/manual__1/tasks/apply_corrections",
        report="s3://finance-reports/run-9")


def _deliver(alert: Any) -> list[str]:
    from reconciler_alerts import deliver_alert  # the DAG bundle folder is on sys.path

    return deliver_alert(alert, {}, log)


def _mail(server: SMTPServer) -> email.message.EmailMessage:
    [raw] = server.messages
    message = email.message_from_string(raw, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def test_smtp_notifier_mails_the_alert_with_links(smtp_server: SMTPServer, dagbag: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """SmtpNotifier sends one mail from the connection's from_email to its recipients; the body carries the
    text, the run, log and report links, and the details, with braces left as they are (no Jinja)."""
    monkeypatch.setenv("AIRFLOW_CONN_RECONCILER_SMTP", smtp_connection(smtp_server, "finance@example.com, ops@x.test"))
    assert _deliver(_alert()) == ["mail to finance@example.com, ops@x.test"]
    message = _mail(smtp_server)
    assert message["Subject"] == "[reconciler] Reconciliation run 9 failed in apply_corrections"
    assert message["From"] == "reconciler@example.com"
    body = " ".join(part.get_content() for part in message.walk() if part.get_content_type() == "text/html")
    for expected in ("lock timeout {{ not jinja }}", 'href="http://airflow.test/dags/ledger_reconciliation/runs/manual__1"',
                     "/tasks/apply_corrections", "s3://finance-reports/run-9"):
        assert expected in body, expected
    assert [line.upper() for line in smtp_server.envelope if line.upper().startswith("RCPT")] == [
        "RCPT TO:<FINANCE@EXAMPLE.COM>", "RCPT TO:<OPS@X.TEST>"]


def test_http_notifier_posts_the_alert_json(webhook: Webhook, dagbag: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """HttpNotifier POSTs the alert's JSON (chat text first, with the links) to the webhook URL, path included."""
    monkeypatch.setenv("AIRFLOW_CONN_RECONCILER_ALERTS", http_connection(webhook.url))
    alert = _alert()
    assert _deliver(alert) == ["webhook reconciler_alerts"]
    [request] = webhook.received
    assert request["path"] == "/alerts/finance" and request["content_type"] == "application/json"
    assert request["json"] == alert.to_json()
    assert request["json"]["text"].splitlines()[-1] == "Report: s3://finance-reports/run-9"


def test_a_failing_channel_does_not_stop_the_other(webhook: Webhook, dagbag: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With the SMTP server gone the webhook still gets the alert; then the step fails without retry, naming
    the channel that failed and the one that worked. No channel configured: logged only, no error."""
    from airflow.sdk.exceptions import AirflowFailException

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("AIRFLOW_CONN_RECONCILER_SMTP", smtp_connection(_Closed(closed)))
    monkeypatch.setenv("AIRFLOW_CONN_RECONCILER_ALERTS", http_connection(webhook.url))
    with pytest.raises(AirflowFailException, match=r"not delivered by mail to .*delivered by webhook"):
        _deliver(_alert())
    assert len(webhook.received) == 1
    monkeypatch.delenv("AIRFLOW_CONN_RECONCILER_SMTP")
    monkeypatch.delenv("AIRFLOW_CONN_RECONCILER_ALERTS")
    assert _deliver(_alert()) == []


def test_webhook_error_status_fails_the_delivery(webhook: Webhook, dagbag: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-2xx answer from the webhook is a delivery failure, not a silent success."""
    from airflow.sdk.exceptions import AirflowFailException

    webhook.status = 500
    monkeypatch.setenv("AIRFLOW_CONN_RECONCILER_ALERTS", http_connection(webhook.url))
    with pytest.raises(AirflowFailException, match="500"):
        _deliver(_alert())


class _Closed:
    """Stands in for an SMTP server on a port nobody listens on."""

    def __init__(self, port: int) -> None:
        self.port = port


def test_passwords_of_the_alert_connections_appear_nowhere(webhook: Webhook, dagbag: Any, caplog: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A webhook connection with a login and password, and an SMTP connection with a password to a closed
    port: the webhook still gets the alert, the mail fails, and neither password is in the error, the log or
    what the webhook received."""
    from airflow.sdk.exceptions import AirflowFailException

    from tests.fix_secrets import HOOK_PASSWORD, SMTP_PASSWORD, leaks

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("AIRFLOW_CONN_RECONCILER_ALERTS", json.dumps(
        {"conn_type": "http", "host": webhook.url, "login": "finance", "password": HOOK_PASSWORD}))
    monkeypatch.setenv("AIRFLOW_CONN_RECONCILER_SMTP", json.dumps(
        {"conn_type": "smtp", "host": "127.0.0.1", "port": closed, "login": "mailer", "password": SMTP_PASSWORD,
         "extra": {"from_email": "reconciler@example.com", "disable_tls": True, "disable_ssl": True,
                   "timeout": 2, "retry_limit": 1, "to": "finance@example.com"}}))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AirflowFailException) as failed:
        _deliver(_alert())
    assert webhook.received
    assert leaks([str(failed.value), caplog.text, json.dumps([r["json"] for r in webhook.received])]) == []
