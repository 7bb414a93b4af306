"""Alert delivery against real local servers (HTTP webhook, SMTP) and the watchdog's query on a real database."""

from __future__ import annotations

import datetime as dt
import json
import socket
import socketserver
import threading

import pytest
from sqlalchemy import Engine, insert

from reconciler.alerts import (
    EmailChannel,
    WebhookChannel,
    alert_for_failure,
    alert_for_staleness,
    deliver,
    last_success_at,
    latest_run,
)
from reconciler.errors import AlertDeliveryError
from reconciler.schema import runs
from tests.fix_http import Webhook


def test_webhook_receives_the_alert_as_json(webhook: Webhook) -> None:
    """deliver() POSTs the alert's JSON to the webhook URL, path included."""
    alert = alert_for_failure(run_id=4, where="ledger_reconciliation.plan_chunks (try 1)", error="boom")
    deliver(alert, WebhookChannel(url=webhook.url, timeout=5))
    assert len(webhook.received) == 1
    request = webhook.received[0]
    assert request["path"] == "/alerts/finance" and request["content_type"] == "application/json"
    assert request["json"] == json.loads(json.dumps(alert.to_json()))


def test_webhook_error_status_is_a_delivery_error(webhook: Webhook) -> None:
    """A non-2xx answer raises AlertDeliveryError naming the status but not the URL's path (it may hold tokens)."""
    webhook.status = 500
    with pytest.raises(AlertDeliveryError, match="answered HTTP 500") as raised:
        deliver(alert_for_failure(run_id=1, where="t", error="e"), WebhookChannel(url=webhook.url, timeout=5))
    assert "/alerts/finance" not in str(raised.value)


def test_unreachable_webhook_is_a_delivery_error() -> None:
    """Nobody listening gives AlertDeliveryError, not a hang or a raw socket error."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(AlertDeliveryError, match="unreachable"):
        deliver(alert_for_failure(run_id=1, where="t", error="e"), WebhookChannel(url=f"http://127.0.0.1:{port}/x",
                                                                                  timeout=2))


class _SMTPHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP to accept one message (RFC 5321 happy path)."""

    def _reply(self, line: str) -> None:
        self.wfile.write(f"{line}\r\n".encode())

    def handle(self) -> None:
        server: _SMTPServer = self.server  # type: ignore[assignment]
        self._reply("220 localhost test SMTP")
        while raw := self.rfile.readline():
            command = raw.decode().strip()
            verb = command.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self._reply("250 localhost")
            elif verb in ("MAIL", "RCPT", "RSET", "NOOP"):
                server.envelope.append(command)
                self._reply("250 OK")
            elif verb == "DATA":
                self._reply("354 end with .")
                lines = []
                while (line := self.rfile.readline().decode()) not in (".\r\n", ".\n", ""):
                    lines.append(line)
                server.messages.append("".join(lines))
                self._reply("250 queued")
            elif verb == "QUIT":
                self._reply("221 bye")
                return
            else:
                self._reply("502 not implemented")


class _SMTPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SMTPHandler)
        self.messages: list[str] = []
        self.envelope: list[str] = []


def test_email_is_sent_over_smtp() -> None:
    """deliver() mails the alert to every recipient through the SMTP server."""
    server = _SMTPServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        channel = EmailChannel(host="127.0.0.1", port=server.server_address[1], sender="reconciler@example.com",
                               recipients=("finance@example.com", "ops@example.com"), timeout=5)
        deliver(alert_for_failure(run_id=9, where="apply_corrections", error="lock timeout"), channel)
    finally:
        server.shutdown()
        server.server_close()
    assert len(server.messages) == 1
    assert "Subject: [reconciler] Reconciliation run 9 failed in apply_corrections" in server.messages[0]
    assert "lock timeout" in server.messages[0]
    assert [line.upper() for line in server.envelope if line.upper().startswith("RCPT")] == [
        "RCPT TO:<FINANCE@EXAMPLE.COM>", "RCPT TO:<OPS@EXAMPLE.COM>"]


def _record_run(engine: Engine, status: str, finished_at: dt.datetime | None) -> None:
    with engine.begin() as conn:
        conn.execute(insert(runs).values(status=status, trigger="scheduled", params={},
                                         started_at=(finished_at or dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5),
                                         finished_at=finished_at))


def test_last_success_ignores_failed_halted_and_running_runs(engine: Engine) -> None:
    """The watchdog's age is from the newest succeeded run; later failed, halted or running runs do not count."""
    assert last_success_at(engine) is None and latest_run(engine) is None
    ok = dt.datetime(2026, 11, 24, 2, 10, tzinfo=dt.UTC)
    _record_run(engine, "succeeded", ok - dt.timedelta(days=1))
    _record_run(engine, "succeeded", ok)
    _record_run(engine, "failed", ok + dt.timedelta(days=1))
    _record_run(engine, "halted", ok + dt.timedelta(days=1, hours=1))
    _record_run(engine, "running", None)
    assert last_success_at(engine) == ok
    latest = latest_run(engine)
    assert latest is not None and latest.status == "running"
    alert = alert_for_staleness(last_success_at(engine), ok + dt.timedelta(days=2), latest=latest)
    assert alert is not None and alert.details["last_success_at"] == ok.isoformat()
    assert f"The newest run {latest.run_id} (scheduled" in alert.text
