"""The shared bytecode cache behind GX's Data Docs templates: a template compiled by one process serves the
next from the file cache, renders the same, and an edited template is compiled again."""

from __future__ import annotations

from pathlib import Path

import jinja2

from reconciler.gx_runtime import MemoryBytecodeCache


def _render(templates: Path, cache_dir: Path) -> tuple[str, int]:
    """Render with a fresh in-memory cache (as a new process has) over the file cache; count the compiles."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates),
                             bytecode_cache=MemoryBytecodeCache(jinja2.FileSystemBytecodeCache(str(cache_dir))))
    compiles = 0
    original = env.compile

    def counted(*args: object, **kwargs: object) -> object:
        nonlocal compiles
        compiles += 1
        return original(*args, **kwargs)  # type: ignore[arg-type]

    env.compile = counted  # type: ignore[method-assign]
    return env.get_template("page.html").render(name="ledger"), compiles


def test_a_compiled_template_is_reused_across_processes_and_recompiled_when_edited(tmp_path: Path) -> None:
    """First use compiles; a later 'process' loads the bytecode and renders the same; an edit recompiles."""
    templates, cache_dir = tmp_path / "templates", tmp_path / "cache"
    templates.mkdir()
    cache_dir.mkdir()
    (templates / "page.html").write_text("<p>{{ name | upper }}</p>")
    assert _render(templates, cache_dir) == ("<p>LEDGER</p>", 1)
    assert _render(templates, cache_dir) == ("<p>LEDGER</p>", 0)
    (templates / "page.html").write_text("<b>{{ name }}</b>")
    assert _render(templates, cache_dir) == ("<b>ledger</b>", 1)
