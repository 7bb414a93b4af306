"""Real Airflow processes for the server tests: a REST API v2 client with a JWT, free ports, polling with a
deadline that fails with the processes' log tails, and stopping whole process groups (SIGTERM, then SIGKILL for
whatever outlives the grace period), so that no Airflow process outlives a test, even a failing one."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Api:
    """Airflow's REST API v2 at ``base``, as the user whose JWT is ``token``."""

    base: str
    token: str = ""

    def call(self, method: str, path: str, body: object | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"{self.base}{path}", method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json",
                     **({"Authorization": f"Bearer {self.token}"} if self.token else {})})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def login(self, username: str, password: str) -> str | None:
        """A JWT from /auth/token, or None while the api-server does not answer yet."""
        try:
            status, body = self.call("POST", "/auth/token", {"username": username, "password": password})
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None
        return str(body["access_token"]) if status == 201 else None

    def get(self, path: str) -> Any | None:
        """GET ``path``'s JSON, or None when the (busy) api-server did not answer or said no."""
        try:
            status, body = self.call("GET", path)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None
        return body if status == 200 else None


@dataclass
class Processes:
    """Named processes, each the leader of its own process group, with its output in ``logs[name]``."""

    logs: dict[str, Path] = field(default_factory=dict)
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, command: list[str], env: Mapping[str, str], log: Path, cwd: Path | None = None) -> None:
        self.logs[name] = log
        with log.open("wb") as out:
            self.running[name] = subprocess.Popen(command, env=dict(env), cwd=cwd, stdout=out,
                                                  stderr=subprocess.STDOUT, start_new_session=True)

    def tails(self, names: Iterable[str] | None = None, chars: int = 3000) -> str:
        return "\n".join(f"--- {name} ({self.logs[name]}) ---\n{self.logs[name].read_text(errors='replace')[-chars:]}"
                         for name in (names or self.logs))

    def wait_for(self, what: str, check: Callable[[], T | None], timeout: float) -> T:
        """Poll ``check`` (every 0.5 s) until it returns a value; fail with the log tails when the deadline passes
        or a process exits meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.running.items():
                if process.poll() is not None:
                    pytest.fail(f"{name} exited ({process.returncode}) while waiting for {what}:\n"
                                f"{self.tails([name], 6000)}")
            value = check()
            if value is not None:
                return value
            time.sleep(0.5)
        pytest.fail(f"no {what} within {timeout:.0f} s; log tails:\n{self.tails()}")

    def stop(self, grace: float = 30) -> None:
        """SIGTERM every process group (Airflow's and Celery's warm shutdown), SIGKILL what is left after
        ``grace`` seconds, and reap the leaders."""
        for process in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(group_alive(p.pid) for p in self.running.values()) and time.monotonic() < deadline:
            for process in self.running.values():
                process.poll()  # reap a leader that exited, so its group can empty
            time.sleep(0.2)
        for process in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
