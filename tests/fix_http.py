"""Local servers on 127.0.0.1 (random ports) for alert tests: a webhook receiver that records every POST and
answers ``status``, and just enough of an SMTP server to accept mail."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Webhook:
    """What the local webhook received; set ``status`` to make it answer with an error."""

    url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    """An HTTP server on 127.0.0.1 (random port) in a thread, stopped after the test."""
    hook = Webhook(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            hook.received.append({"path": self.path, "content_type": self.headers["Content-Type"],
                                  "json": json.loads(body)})
            self.send_response(hook.status)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/alerts/finance"
    yield hook
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


class _SMTPHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP to accept messages (RFC 5321 happy path, no STARTTLS, no AUTH)."""

    def _reply(self, line: str) -> None:
        self.wfile.write(f"{line}\r\n".encode())

    def handle(self) -> None:
        server: SMTPServer = self.server  # type: ignore[assignment]
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


class SMTPServer(socketserver.ThreadingTCPServer):
    """What the local SMTP server received: whole messages and the envelope commands."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SMTPHandler)
        self.messages: list[str] = []
        self.envelope: list[str] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@pytest.fixture
def smtp_server() -> Iterator[SMTPServer]:
    """An SMTP server on 127.0.0.1 (random port) in a thread, stopped after the test."""
    server = SMTPServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def http_connection(url: str) -> str:
    """An ``AIRFLOW_CONN_*`` value for an HTTP connection whose host is the full webhook URL."""
    return json.dumps({"conn_type": "http", "host": url})


def smtp_connection(server: SMTPServer, to: str = "finance@example.com") -> str:
    """An ``AIRFLOW_CONN_*`` value for the local SMTP server: plain SMTP (no TLS, no SSL), one try."""
    return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": server.port,
                       "extra": {"from_email": "reconciler@example.com", "disable_tls": True, "disable_ssl": True,
                                 "timeout": 5, "retry_limit": 1, "to": to}})
