"""Great Expectations, loaded: its import (with the modules it never needs here deferred), its logging kept to
warnings, and its Data Docs templates compiled once per machine. :mod:`reconciler.quality` runs the suites;
this module only decides how GX is brought into the process, so that cost has one home."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("reconciler.gx_runtime")


#: Modules Great Expectations imports with itself only for expectations this product never runs: ``scipy.stats``
#: for the KL-divergence and KS-test expectations (``from scipy import stats`` at the top of their modules, used
#: only inside their functions). Measured: GX's import 2.0 s -> 1.3 s on a quiet machine, of that 0.45 s
#: ``scipy.stats`` itself and the rest ``scipy.spatial`` and ``scipy.linalg`` under it.
DEFERRED_IMPORTS: tuple[str, ...] = ("scipy.stats",)


def defer_import(name: str) -> bool:
    """Put ``name`` in ``sys.modules`` as a lazy module (:class:`importlib.util.LazyLoader`): it is executed,
    whole and as usual, the first time anything reads one of its attributes, and never if nothing does. Sound
    by construction: nothing changes but WHEN the module runs. False when it is already imported or absent.

    (``altair``, also imported by GX only for charts, cannot be deferred so: a plain ``import altair`` reads
    the module's ``__spec__``, which loads a lazy module at once.)"""
    if name in sys.modules:
        return False
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    if spec is None or spec.loader is None:
        return False
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent and parent in sys.modules:
        setattr(sys.modules[parent], child, module)  # as the import system does once a submodule is loaded
    return True


_IMPORT_LOCK = threading.Lock()


def import_great_expectations() -> Any:
    """``import great_expectations``, with :data:`DEFERRED_IMPORTS` deferred (see :func:`defer_import`); GX's
    own logging kept to warnings while it loads. The one way this product imports GX."""
    with _IMPORT_LOCK:
        if "great_expectations" not in sys.modules:
            for name in DEFERRED_IMPORTS:
                defer_import(name)
        with quiet_gx():
            import great_expectations  # noqa: PLC0415

    return great_expectations


def preload_great_expectations() -> threading.Thread:
    """Start importing Great Expectations (:func:`import_great_expectations`) in a daemon thread and return
    it; :func:`check_run_quality` then finds the module loaded (or waits on the import for the thread)."""
    def load() -> None:
        with contextlib.suppress(Exception):
            import_great_expectations()

    thread = threading.Thread(target=load, name="preload-great-expectations", daemon=True)
    thread.start()
    return thread


@contextmanager
def quiet_gx() -> Iterator[None]:
    """GX logs at INFO about its own machinery; keep a run's output to what matters."""
    gx_logger = logging.getLogger("great_expectations")
    level = gx_logger.level
    gx_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        gx_logger.setLevel(level)


def cache_gx_templates() -> None:
    """Data Docs: GX builds a fresh jinja Environment for every page it renders and compiles its templates
    again each time (most of a build). Give those environments one shared bytecode cache, so each template
    compiles once per process, backed by jinja's own :class:`jinja2.FileSystemBytecodeCache` (a private
    per-user folder in the temporary directory), so it compiles once per machine: a run is a fresh process,
    and compiling GX's templates cost it about 0.2 s. Jinja checks each cached template against its source's
    checksum, so an upgraded GX recompiles. Only the cache is added; the pages are the same."""
    import jinja2  # noqa: PLC0415
    from great_expectations.render.view import view  # noqa: PLC0415

    if getattr(view, "_reconciler_cached", False):
        return
    try:
        backing: jinja2.BytecodeCache | None = jinja2.FileSystemBytecodeCache()
    except (OSError, RuntimeError) as exc:  # no private temporary folder: compile once per process only
        log.debug("no file cache for GX's templates (%s)", exc)
        backing = None
    cache = MemoryBytecodeCache(backing)
    original = view.Environment

    def environment(*args: Any, **kwargs: Any) -> jinja2.Environment:
        kwargs.setdefault("bytecode_cache", cache)
        return original(*args, **kwargs)

    view.Environment = environment  # type: ignore[misc,assignment]
    view._reconciler_cached = True  # type: ignore[attr-defined]


class MemoryBytecodeCache:
    """A jinja2 bytecode cache in a dict (jinja's own in-memory caches are per Environment), in front of an
    optional ``backing`` cache (a failing backing cache only costs a compile)."""

    def __new__(cls, backing: Any = None) -> Any:
        import jinja2  # noqa: PLC0415

        class Cache(jinja2.BytecodeCache):
            def __init__(self) -> None:
                self._store: dict[str, bytes] = {}
                self._lock = threading.Lock()

            def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
                with self._lock:
                    data = self._store.get(bucket.key)
                if data is not None:
                    bucket.bytecode_from_string(data)
                    return
                if backing is not None:
                    with contextlib.suppress(Exception):
                        backing.load_bytecode(bucket)
                    if bucket.code is not None:
                        with self._lock:
                            self._store[bucket.key] = bucket.bytecode_to_string()

            def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
                with self._lock:
                    self._store[bucket.key] = bucket.bytecode_to_string()
                if backing is not None:
                    with contextlib.suppress(Exception):
                        backing.dump_bytecode(bucket)

        return Cache()
