"""Great Expectations' Data Docs made to open styled without a network.

Invariant: after :func:`make_offline`, no page of a Data Docs site refers to a host on the internet. GX's
templates load Bootstrap, jQuery and Font Awesome (and a few table, date-picker and chart plugins) from
CDNs; Bootstrap, jQuery and Font Awesome are copied from the installed XStatic packages into
``<site>/static/vendor/`` and the pages point there (relative links, so the site can be moved or served from
any object store); the plugins have no packaged copy and are dropped: tables lose their filter widgets and
the pages stay readable.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

VENDOR_DIR = "static/vendor"

#: CDN reference (a regular expression on the URL) -> the local file that replaces it, under VENDOR_DIR.
_REPLACEMENTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"bootstrap(cdn)?[^\"']*/bootstrap(\.min)?\.css$"), "bootstrap/css/bootstrap.min.css"),
    (re.compile(r"bootstrap(cdn)?[^\"']*/bootstrap(\.min)?\.js$"), "bootstrap/js/bootstrap.bundle.min.js"),
    (re.compile(r"jquery[^\"']*\.js$"), "jquery/jquery.min.js"),
    (re.compile(r"font-awesome/[^\"']*/all(\.min)?\.css$"), "font-awesome/css/all.min.css"),
)
_REMOTE_TAG = re.compile(
    r"<(?P<tag>link|script)\b[^>]*?\b(?:href|src)=[\"'](?P<url>https?://[^\"']+)[\"'][^>]*?>(?:\s*</script>)?",
    re.IGNORECASE)


def vendor_sources() -> dict[str, Path]:
    """The installed XStatic data folders by vendor name (bootstrap, jquery, font-awesome)."""
    import xstatic.pkg.bootstrap  # noqa: PLC0415  (only when Data Docs are written)
    import xstatic.pkg.font_awesome  # noqa: PLC0415
    import xstatic.pkg.jquery  # noqa: PLC0415

    return {"bootstrap": Path(xstatic.pkg.bootstrap.BASE_DIR), "jquery": Path(xstatic.pkg.jquery.BASE_DIR),
            "font-awesome": Path(xstatic.pkg.font_awesome.BASE_DIR)}


def _copy_vendor(site: Path) -> None:
    target = site / VENDOR_DIR
    for name, source in vendor_sources().items():
        wanted = {"bootstrap": ("css", "js"), "jquery": (), "font-awesome": ("css", "webfonts")}[name]
        destination = target / name
        destination.mkdir(parents=True, exist_ok=True)
        if not wanted:
            shutil.copy2(source / "jquery.min.js", destination / "jquery.min.js")
        for folder in wanted:
            shutil.copytree(source / folder, destination / folder, dirs_exist_ok=True)


def localise_html(html: str, vendor_href: str) -> str:
    """``html`` with every remote ``<link>``/``<script>`` replaced by its local copy under ``vendor_href``
    (a relative URL ending in ``/``) or removed when there is none; a copy is referenced once per page."""
    used: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        url, tag = match.group("url"), match.group("tag").lower()
        for pattern, local in _REPLACEMENTS:
            if pattern.search(url):
                if local in used:
                    return ""
                used.add(local)
                href = f"{vendor_href}{local}"
                if tag == "link":
                    return f'<link rel="stylesheet" href="{href}"/>'
                return f'<script src="{href}"></script>'
        return ""

    return _REMOTE_TAG.sub(replace, html)


def make_offline(site: Path) -> int:
    """Copy the vendored assets into the Data Docs ``site`` and rewrite its pages; return how many pages."""
    _copy_vendor(site)
    pages = 0
    for page in site.rglob("*.html"):
        depth = os.path.relpath(site / VENDOR_DIR, page.parent).replace(os.sep, "/")
        text = page.read_text(encoding="utf-8")
        changed = localise_html(text, f"{depth}/")
        if changed != text:
            page.write_text(changed, encoding="utf-8")
        pages += 1
    return pages
