"""The entry kinds a ledger entry may carry: ONE list, ``expectations/vocabulary/entry_kinds.json``.

Invariant: the balance core refuses (and writes nothing for) any kind this list does not hold, and the
``ledger_entries`` quality suite fails any other kind it finds, both reading this same file through this
module. ``RECONCILER_ENTRY_KINDS`` may point at a company's own copy of the file. Pure apart from reading
that one file once per process.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import InvalidOperationError, UnknownEntryKindError

ENTRY_KINDS_ENV = "RECONCILER_ENTRY_KINDS"
DEFAULT_ENTRY_KINDS_PATH = Path(__file__).resolve().parent.parent / "expectations" / "vocabulary" / "entry_kinds.json"
#: A kind is a plain lower-case word (so the suite can render the list into its SQL as literals safely).
_KIND = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class EntryKinds:
    """The allowed kinds and the longest kind the list allows."""

    kinds: frozenset[str]
    max_length: int
    path: Path

    def check(self, kind: object) -> str:
        """Return ``kind`` when it is in the list, else raise :class:`UnknownEntryKindError`."""
        if isinstance(kind, str) and kind in self.kinds:
            return kind
        if not isinstance(kind, str):
            problem = f"must be text, got {type(kind).__name__} {kind!r}"
        elif kind != kind.strip():
            problem = f"{kind!r} has surrounding whitespace"
        elif len(kind) > self.max_length:
            problem = f"is {len(kind)} characters long, more than the {self.max_length} the list allows"
        else:
            problem = f"{kind!r} is not a known kind"
        raise UnknownEntryKindError(
            f"entry kind {problem}; allowed: {', '.join(sorted(self.kinds))}. Nothing was written. To add a "
            f"kind, add it to {self.path} (see README, 'Entry kinds')")

    def sql_list(self) -> str:
        """The kinds as a SQL list literal ``('a', 'b')``; safe because every kind matches ``[a-z][a-z0-9_]*``."""
        return "(" + ", ".join(f"'{kind}'" for kind in sorted(self.kinds)) + ")"


def entry_kinds_path() -> Path:
    configured = os.environ.get(ENTRY_KINDS_ENV, "").strip()
    return Path(configured) if configured else DEFAULT_ENTRY_KINDS_PATH


@functools.cache
def _load(path: Path) -> EntryKinds:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidOperationError(f"cannot read the entry kinds from {path}: {exc}; set {ENTRY_KINDS_ENV} to "
                                    f"the file listing them") from None
    kinds, max_length = data.get("kinds"), data.get("max_length")
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
        raise InvalidOperationError(f"{path}: max_length must be a whole number >= 1, got {max_length!r}")
    if not isinstance(kinds, list) or not kinds:
        raise InvalidOperationError(f"{path}: kinds must be a non-empty list of kinds")
    for kind in kinds:
        if not isinstance(kind, str) or not _KIND.fullmatch(kind) or len(kind) > max_length:
            raise InvalidOperationError(
                f"{path}: kind {kind!r} must be lower-case letters, digits and underscores (starting with a "
                f"letter), at most {max_length} characters")
    return EntryKinds(frozenset(kinds), max_length, path)


#: (RECONCILER_ENTRY_KINDS as last seen, its list): the balance core checks a kind on every payment, and this
#: spares it building and hashing a Path each time while still following a changed setting.
_in_force: tuple[str, EntryKinds] | None = None


def load_entry_kinds() -> EntryKinds:
    """The list in force (read once per process and path)."""
    global _in_force
    configured = os.environ.get(ENTRY_KINDS_ENV, "")
    known = _in_force
    if known is not None and known[0] == configured:
        return known[1]
    kinds = _load(entry_kinds_path())
    _in_force = (configured, kinds)
    return kinds


def check_kind(kind: object) -> str:
    """Return ``kind`` when the list holds it, else raise :class:`UnknownEntryKindError` (nothing written)."""
    return load_entry_kinds().check(kind)
