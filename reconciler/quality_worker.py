"""The quality step off the critical path: a child process that imports Great Expectations while the run
compares its chunks and validates, meanwhile, every suite that does not read the run's own results; when the
comparison is done it validates the rest (:func:`reconciler.quality.check_run_quality` with ``ready``),
builds the Data Docs and stores every result at once.

Invariant: the worker is an optimisation only. It changes no result: the child runs the very function the
in-process step runs, on its own engine, and stores the same rows; when the child cannot start, fails or dies,
the parent runs the step in-process instead (so a lost database still surfaces there, as one clear line).

Why a process and not a thread: importing GX costs 1.3-2.5 s of Python, holding the GIL in slices; a
thread doing it beside the chunk workers delays every result the chunk threads wait for (measured: the
comparison took twice as long; with the GIL's switch interval cut to 0.2 ms as well, 1M dry runs in fresh
processes, rounds alternating, took 12.9, 6.5 and 6.4 s against 5.5, 9.7 and 5.3 s without the thread).
The child keeps the normal CPU priority: on a shared machine a lower one starved it behind other work
(measured: the quality step took longer than without a child).

When it pays (bench/README.md): only when the GX work finds a free core. Where PostgreSQL runs on another
machine, the comparison leaves this one idle, and the child takes GX's import and most of its checks off the
critical path. Where PostgreSQL shares this machine and the comparison's workers already fill its cores,
the child only competes with them (measured on 2 cores with the database local: runs 18.8 s and 37.2 s
without it, 29.2 s and 40.5 s with it, rounds alternating). ``RECONCILER_QUALITY_WORKER``: ``auto`` (the
default) starts it unless the database is local (a Unix socket, ``localhost`` or a loopback address) and
the machine has fewer than ``workers + 2`` cores; ``on`` and ``off`` force it.

Protocol (JSON lines over the child's stdin and stdout, so the URL and its password are never in argv or the
environment): parent -> ``{"url": ..., "run_id": N}``; the child imports GX and validates the early suites;
parent -> ``{"go": true}`` once the chunks are compared; child -> ``{"ok": true, "summary": {...}}`` or
``{"ok": false, "error": "..."}``, then exits. When the parent closes stdin instead (the run failed before its
quality step), the child stores nothing and exits.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from typing import IO, Any

log = logging.getLogger("reconciler.quality")

WORKER_ENV = "RECONCILER_QUALITY_WORKER"
#: How long the parent waits for the child's answer once it asked (the checks themselves included).
ANSWER_TIMEOUT_SECONDS = 3600.0


_LOCAL_HOSTS = ("", "localhost", "127.0.0.1", "::1")


def database_is_local(url: str) -> bool:
    """Whether the database in ``url`` runs on this machine (a Unix socket or a loopback host)."""
    from urllib.parse import parse_qs, urlsplit  # noqa: PLC0415

    parts = urlsplit(url)
    socket = parse_qs(parts.query).get("host", [""])[0]
    return socket.startswith("/") or (parts.hostname or "") in _LOCAL_HOSTS


def worker_enabled(url: str = "", workers: int = 2) -> bool:
    """``RECONCILER_QUALITY_WORKER``: ``on``, ``off``, or ``auto`` (default): on unless the database shares
    this machine and the comparison's ``workers`` leave no core to spare (see the module docstring)."""
    mode = os.environ.get(WORKER_ENV, "auto").strip().lower()
    if mode in ("off", "0", "false", "no"):
        return False
    if mode in ("on", "1", "true", "yes"):
        return True
    return not (database_is_local(url) and (os.cpu_count() or 1) < workers + 2)


class QualityWorker:
    """A started child; :meth:`check` asks it once, :meth:`close` ends it (also when never asked)."""

    def __init__(self, process: subprocess.Popen[str], run_id: int) -> None:
        self._process = process
        self._run_id = run_id

    @classmethod
    def start(cls, url: str, run_id: int, *, workers: int = 2) -> QualityWorker | None:
        """Start the child for ``run_id`` (it begins importing GX at once); None when it cannot be started or
        is not wanted (:func:`worker_enabled`; ``workers``: the comparison's chunk workers)."""
        if not worker_enabled(url, workers):
            return None
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "reconciler.quality_worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True)
            assert process.stdin is not None
            process.stdin.write(json.dumps({"url": url, "run_id": run_id}) + "\n")
            process.stdin.flush()
        except (OSError, ValueError) as exc:
            log.debug("quality worker not started (%s); the step runs in-process", exc)
            return None
        return cls(process, run_id)

    def check(self, run_id: int) -> dict[str, Any] | None:
        """The child's summary of the run's checks (``evaluated``, ``failed``, ``warnings``, ``data_docs_path``),
        or None when the child could not answer (the caller then runs the step in-process)."""
        process = self._process
        if self._run_id != run_id:
            self.close()
            return None
        try:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(json.dumps({"go": True}) + "\n")
            process.stdin.flush()
            line = _readline(process.stdout, ANSWER_TIMEOUT_SECONDS)
        except (OSError, ValueError, AssertionError) as exc:
            log.debug("quality worker lost (%s); the step runs in-process", exc)
            return None
        finally:
            self.close()
        try:
            answer = json.loads(line) if line else {}
        except ValueError:
            answer = {}
        if not answer.get("ok"):
            log.debug("quality worker failed (%s); the step runs in-process", answer.get("error"))
            return None
        summary: dict[str, Any] = answer["summary"]
        return summary

    def close(self) -> None:
        process = self._process
        if process.poll() is None:
            try:
                if process.stdin is not None:
                    process.stdin.close()
                process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()


def _readline(stream: IO[str], timeout: float) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0] if result else ""


class _NotNeeded(Exception):
    """The parent closed the pipe before asking: the run ended before its quality step."""


def main() -> int:
    """The child: read the URL and the run, import GX, validate what need not wait, wait, finish, answer once."""
    hello = sys.stdin.readline()
    if not hello:
        return 0
    asked = json.loads(hello)

    def ready() -> None:
        if not sys.stdin.readline():
            raise _NotNeeded

    try:
        from reconciler.db import make_engine  # noqa: PLC0415
        from reconciler.quality import check_run_quality, preload_great_expectations  # noqa: PLC0415

        preload_great_expectations().join()
        engine = make_engine(asked["url"], pool_size=2)
        try:
            result = check_run_quality(engine, int(asked["run_id"]), ready=ready)
        finally:
            engine.dispose()
        docs = result.data_docs_path
        answer: dict[str, Any] = {"ok": True, "summary": {
            "evaluated": result.evaluated, "failed": result.failed, "warnings": result.warnings,
            "success": result.success, "data_docs_path": str(docs) if docs else None, "seconds": result.seconds}}
    except _NotNeeded:
        return 0
    except Exception as exc:  # reported to the parent, which then runs the step itself
        answer = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
