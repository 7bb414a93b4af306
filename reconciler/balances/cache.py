"""The balance core's TTL read cache (thread-safe; every write through the core invalidates it)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal


class BalanceCache:
    """Thread-safe TTL cache of balances. A read that raced with an invalidation is not stored (the
    generation counter moved), so an invalidation is never undone by a slow reader."""

    def __init__(self, ttl: float, clock: Callable[[], float], max_entries: int) -> None:
        self._ttl = ttl
        self._clock = clock
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: dict[int, tuple[Decimal, float]] = {}
        self._generation = 0

    def get(self, customer_id: int) -> tuple[Decimal | None, int]:
        """The cached balance (or None) and the generation to pass to :meth:`put`."""
        with self._lock:
            hit = self._entries.get(customer_id)
            if hit is not None and self._clock() < hit[1]:
                return hit[0], self._generation
            if hit is not None:
                del self._entries[customer_id]
            return None, self._generation

    def put(self, customer_id: int, balance: Decimal, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return
            now = self._clock()
            if len(self._entries) >= self._max_entries:
                self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
                if len(self._entries) >= self._max_entries:
                    self._entries.clear()
            self._entries[customer_id] = (balance, now + self._ttl)

    def invalidate(self, *customer_ids: int) -> None:
        with self._lock:
            self._generation += 1
            for customer_id in customer_ids:
                self._entries.pop(customer_id, None)

