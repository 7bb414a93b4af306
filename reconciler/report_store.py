"""Where reports and Data Docs are kept: one base for every machine that writes them.

Invariant: a run's report files and its Data Docs all end up under ``<base>/run-<id>/`` (Data Docs in
``data_docs/``), whichever machine wrote which part, as long as every machine has the same base. The base
is ``RECONCILER_REPORTS_URL``: a local folder (the default: ``<RECONCILER_HOME>/reports``), ``file://...``,
or any fsspec URL (``s3://bucket/reports``, ``gs://...``, ``memory://...``; the backend's package, e.g.
s3fs, must be installed). Writers write into a local folder (:func:`staged`); for a remote base that folder
is a temporary one, uploaded when the writer succeeds, so a failed writer leaves nothing half-written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reconciler.config import reports_dir
from reconciler.errors import InvalidOperationError

REPORTS_URL_ENV = "RECONCILER_REPORTS_URL"
DATA_DOCS_DIR = "data_docs"


def reports_url() -> str:
    """The configured base: ``RECONCILER_REPORTS_URL``, else the local reports folder."""
    return os.environ.get(REPORTS_URL_ENV, "").strip() or str(reports_dir())


def run_location(run_id: int, *parts: str, base: str | None = None) -> str:
    """``<base>/run-<id>[/<parts>...]`` as a path or URL string."""
    root = (base or reports_url()).rstrip("/")
    return "/".join([root, f"run-{run_id}", *parts])


def _filesystem(location: str) -> tuple[Any, str]:
    from fsspec.core import url_to_fs  # noqa: PLC0415  (imported where reports are written, not at CLI start)

    try:
        return url_to_fs(location)
    except (ImportError, ValueError) as exc:
        raise InvalidOperationError(
            f"{REPORTS_URL_ENV}: cannot open {location!r} ({exc}); use a local folder, file://, or an fsspec URL "
            f"whose backend is installed (e.g. pip install s3fs for s3://)") from None


def is_local(location: str) -> bool:
    """Whether ``location`` is on this machine's file system (a path or a ``file://`` URL)."""
    fs, _ = _filesystem(location)
    return "file" in _protocols(fs)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def local_path(location: str) -> Path:
    """The local folder of a local ``location`` (a path or ``file://`` URL)."""
    _, path = _filesystem(location)
    return Path(path)


def exists(location: str) -> bool:
    fs, path = _filesystem(location)
    return bool(fs.exists(path))


def read_text(location: str) -> str:
    fs, path = _filesystem(location)
    with fs.open(path, "r", encoding="utf-8") as handle:
        return str(handle.read())


def list_files(location: str) -> list[str]:
    """Every file under ``location``, as paths relative to it (sorted)."""
    fs, path = _filesystem(location)
    if not fs.exists(path):
        return []
    root = path.rstrip("/")
    return sorted(str(name)[len(root) + 1:] for name in fs.find(root))


def publish(folder: Path, location: str, *, replace: bool = False) -> int:
    """Upload every file under the local ``folder`` to ``location`` (``replace``: remove what was there first);
    return how many files."""
    fs, path = _filesystem(location)
    if replace and fs.exists(path):
        fs.rm(path, recursive=True)
    count = 0
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        target = f"{path.rstrip('/')}/{file.relative_to(folder).as_posix()}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(file), target)
        count += 1
    return count


@contextmanager
def staged(location: str, *, replace: bool = False) -> Iterator[Path]:
    """A local folder to write ``location``'s files into: the folder itself when ``location`` is local, else a
    temporary folder uploaded to ``location`` when the block succeeds (``replace``: the old files go first)."""
    if is_local(location):
        folder = local_path(location)
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="reconciler-report-") as tmp:
        yield Path(tmp)
        publish(Path(tmp), location, replace=replace)
