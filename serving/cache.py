"""The prediction cache, behind one tiny interface.

Values are JSON-ready dicts and lists. The disk backend (diskcache: SQLite plus
files, process-safe) is shared by every Gunicorn worker on the machine; the
memory backend is per worker process; ``none`` disables caching.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

import diskcache


class PredictionCache(Protocol):
    def get(self, key: str) -> Any | None: ...

    def set(self, key: str, value: Any) -> None: ...

    def clear(self) -> int:
        """Empty the cache; returns how many entries were removed."""
        ...

    def health(self) -> dict[str, Any]:
        """``/readyz``'s ``cache``: ``status`` ok | degraded | down, ``backend``, and what is wrong."""
        ...


class NullCache:
    def get(self, key: str) -> Any | None:
        return None

    def set(self, key: str, value: Any) -> None:
        pass

    def clear(self) -> int:
        return 0

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "backend": "none"}


class MemoryCache:
    """A per-process LRU bounded by entry count."""

    def __init__(self, max_items: int) -> None:
        self._max_items = max_items
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Any | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._max_items:
                self._items.popitem(last=False)

    def clear(self) -> int:
        with self._lock:
            count = len(self._items)
            self._items.clear()
            return count

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "backend": "memory"}


class DiskCache:
    """A size-bounded LRU on disk, shared by every process that opens the folder.

    The SQLite connection is opened lazily in each process: a connection made in
    the Gunicorn master must not be used by forked workers.

    With ``cull_on_write`` off, a write evicts nothing (diskcache's
    ``cull_limit=0``, as its docs advise for a cache pruned by another
    process): the job worker's scheduled ``prune`` trims the folder to its
    bound instead, off the request path. A folder grown past twice its bound
    (no job worker running) is trimmed by the next write that finds it so.
    """

    # Writes between the checks of an unpruned folder's size.
    OVERSIZE_CHECK_EVERY = 64

    def __init__(self, directory: Path, max_bytes: int, cull_on_write: bool = True) -> None:
        self._directory = Path(directory)
        self._max_bytes = max_bytes
        self._cull_on_write = cull_on_write
        self._writes = 0
        self._cache: diskcache.Cache | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def _open(self) -> diskcache.Cache:
        pid = os.getpid()
        if self._cache is None or self._pid != pid:
            with self._lock:
                if self._cache is None or self._pid != pid:
                    self._cache = diskcache.Cache(
                        str(self._directory),
                        size_limit=self._max_bytes,
                        eviction_policy="least-recently-used",
                        cull_limit=10 if self._cull_on_write else 0,
                        disk=diskcache.JSONDisk,
                        # A busy cache must slow a request down, not fail it.
                        timeout=5,
                    )
                    self._pid = pid
        return self._cache

    def get(self, key: str) -> Any | None:
        return self._open().get(key)

    def set(self, key: str, value: Any) -> None:
        cache = self._open()
        cache.set(key, value)
        if not self._cull_on_write:
            self._writes += 1
            if self._writes % self.OVERSIZE_CHECK_EVERY == 0 and cache.volume() > 2 * self._max_bytes:
                cache.cull()

    def clear(self) -> int:
        return self._open().clear()

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "backend": "disk"}

    def prune(self) -> int:
        """Evict least recently used entries down to the size bound; how many went."""
        cache = self._open()
        return cache.expire() + cache.cull()

    def volume(self) -> int:
        """Bytes the folder's database and files take."""
        return self._open().volume()


def build_cache(backend: str, directory: Path, max_bytes: int, max_items: int, cull_on_write: bool = True) -> PredictionCache:
    if backend == "disk":
        return DiskCache(directory, max_bytes, cull_on_write)
    if backend == "memory":
        return MemoryCache(max_items)
    return NullCache()
