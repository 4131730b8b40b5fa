"""The prediction cache, behind one tiny interface.

Values are JSON-ready dicts and lists. The disk backend (diskcache: SQLite plus
files, process-safe) is shared by every Gunicorn worker on the machine; the
memory backend is per worker process; ``none`` disables caching.

A cache costs speed, never an answer: ``get`` and ``set`` never raise (a
failing cache reads as a miss and drops the write), and only ``clear``, which a
client asked for, answers that the cache is unavailable.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import diskcache

from serving.errors import CacheUnavailable

log = logging.getLogger(__name__)


class PredictionCache(Protocol):
    def get(self, key: str) -> Any | None:
        """The value, or None on a miss (or when the cache cannot be read)."""
        ...

    def set(self, key: str, value: Any) -> None:
        """Store a value; a cache that cannot be written drops it."""
        ...

    def clear(self) -> int:
        """Empty the cache; returns how many entries were removed
        (``CacheUnavailable`` when it cannot be reached)."""
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


class ThrottledLog:
    """At most one log line per kind of event per ``every`` seconds.

    The first of a kind is logged at once (a traceback, if given, at debug
    level only); later ones within the interval are counted, and the next line
    says how many there were: "prediction cache write failed 312 times in the
    last 61 s: OperationalError: attempt to write a readonly database".
    """

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}  # kind -> (last line at, events since)
        self._lock = threading.Lock()

    def log(
        self,
        kind: str,
        what: str,
        problem: str,
        note: str = "",
        exc: BaseException | None = None,
        level: int = logging.WARNING,
    ) -> bool:
        """Log ``what: problem; note`` unless a line of ``kind`` went out less
        than ``every`` seconds ago; whether it was logged."""
        now = self._clock()
        with self._lock:
            last = self._seen.get(kind)
            if last is not None and now - last[0] < self.every:
                self._seen[kind] = (last[0], last[1] + 1)
                return False
            self._seen[kind] = (now, 0)
        tail = f"; {note}" if note else ""
        if last is None:
            log.log(level, "%s: %s%s", what, problem, tail)
            if exc is not None:
                log.debug("%s (first occurrence)", what, exc_info=exc)
        else:
            log.log(level, "%s %d times in the last %.0f s: %s%s", what, last[1] + 1, now - last[0], problem, tail)
        return True


def _error_text(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, for the log and ``/readyz``."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cannot_open(action: str, exc: BaseException) -> bool:
    """Whether an error says the folder or its database cannot be opened at all
    (missing and not creatable, not a folder, not a database), rather than that
    an open database fails (read-only, full, locked)."""
    if isinstance(exc, OSError):
        return action == "open"
    name = getattr(exc, "sqlite_errorname", "") if isinstance(exc, sqlite3.Error) else ""
    return name.startswith("SQLITE_CANTOPEN") or name == "SQLITE_NOTADB"


class DiskCache:
    """A size-bounded LRU on disk, shared by every process that opens the folder.

    The SQLite connection is opened lazily in each process: a connection made in
    the Gunicorn master must not be used by forked workers.

    With ``cull_on_write`` off, a write evicts nothing (diskcache's
    ``cull_limit=0``, as its docs advise for a cache pruned by another
    process): the job worker's scheduled ``prune`` trims the folder to its
    bound instead, off the request path. A folder grown past twice its bound
    (no job worker running) is trimmed by the next write that finds it so.

    It heals itself, in each process on its own: an error (a read-only or full
    disk, a locked or broken database) closes the cache, and calls skip it
    until a retry is due, 1 s after the first error and doubling to 30 s; the
    first call after that reopens the folder (recreating it if it is gone).
    A folder removed or replaced under an open cache (whose connections would
    go on using the old files) is noticed within ``FOLDER_CHECK_S`` and
    reopened at once. Warnings are one line per kind of error per minute.
    """

    # Writes between the checks of an unpruned folder's size.
    OVERSIZE_CHECK_EVERY = 64
    # Seconds before the first retry after an error; doubled per failed retry up to RETRY_MAX_S.
    RETRY_FIRST_S = 1.0
    RETRY_MAX_S = 30.0
    # A cache that stayed open this long without an error starts its backoff from RETRY_FIRST_S again.
    HEALTHY_AFTER_S = 30.0
    # Seconds between the checks that the open folder is still the one on disk.
    FOLDER_CHECK_S = 1.0
    # Seconds between two warnings of one kind.
    WARN_EVERY_S = 60.0

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        cull_on_write: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._directory = Path(directory)
        self._max_bytes = max_bytes
        self._cull_on_write = cull_on_write
        self._clock = clock
        self._writes = 0
        self._lock = threading.RLock()
        self._fresh_process()

    def _fresh_process(self) -> None:
        """The state of a process that has not used the cache yet (a forked
        worker does not inherit its parent's connection or its troubles)."""
        self._cache: diskcache.Cache | None = None
        self._pid = os.getpid()
        self._identity: tuple[int, int] | None = None  # the open database file's (device, inode)
        self._open_since: float | None = None  # when the open cache was opened
        self._folder_checked = 0.0
        self._retry_at = 0.0  # no cache open: the next call may open it once this is reached
        self._failures = 0  # errors since the cache was last healthy: the backoff's exponent
        self._down = False
        self._broken_since: float | None = None  # when the current outage began
        self._errors = 0
        self._uncached = 0  # calls that skipped the cache in the current outage
        self._last_error: str | None = None
        self._log = ThrottledLog(self.WARN_EVERY_S, self._clock)

    # --- the gate every call goes through ---------------------------------

    def _connection(self) -> diskcache.Cache | None:
        """The open cache, or None while it is broken and no retry is due."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._fresh_process()
        cache = self._cache
        now = self._clock()
        if cache is not None:
            if now - self._folder_checked < self.FOLDER_CHECK_S:
                return cache
            return self._checked(cache, now)
        if now < self._retry_at:
            self._uncached += 1
            return None
        return self._reopen()

    def _checked(self, cache: diskcache.Cache, now: float) -> diskcache.Cache | None:
        """``cache`` if its folder is still the one on disk, else the folder reopened."""
        with self._lock:
            if self._cache is not cache:  # another thread got here first
                return self._cache
            self._folder_checked = now
            if self._database_identity() == self._identity:
                return cache
            self._log.log(
                "folder", "prediction cache folder was removed or replaced", str(self._directory), "reopening it"
            )
            self._close()
            self._retry_at = now
            return self._reopen()

    def _reopen(self) -> diskcache.Cache | None:
        with self._lock:
            if self._cache is not None:
                return self._cache
            if self._clock() < self._retry_at:  # another thread's attempt just failed
                self._uncached += 1
                return None
            try:
                cache = diskcache.Cache(
                    str(self._directory),
                    size_limit=self._max_bytes,
                    eviction_policy="least-recently-used",
                    cull_limit=10 if self._cull_on_write else 0,
                    disk=diskcache.JSONDisk,
                    # A busy cache must slow a request down, not fail it.
                    timeout=5,
                )
            except Exception as exc:
                self._failed("open", exc, None)
                return None
            now = self._clock()
            if self._broken_since is not None:
                self._log.log(
                    "reopened",
                    "prediction cache reopened",
                    f"{self._uncached} calls went uncached in the {now - self._broken_since:.0f} s since it failed",
                    level=logging.INFO,
                )
                self._broken_since, self._uncached = None, 0
            self._cache, self._identity = cache, self._database_identity()
            self._open_since = self._folder_checked = now
            self._down = False
            return cache

    def _failed(self, action: str, exc: BaseException, cache: diskcache.Cache | None) -> None:
        """Count the error; unless the cache that failed was already replaced,
        close it and put off the next attempt."""
        with self._lock:
            now = self._clock()
            self._errors += 1
            self._last_error = _error_text(exc)
            if cache is not self._cache:
                return
            if self._broken_since is None:
                self._broken_since = now
            if self._open_since is not None and now - self._open_since >= self.HEALTHY_AFTER_S:
                self._failures = 0
            self._open_since = None
            self._failures += 1
            delay = min(self.RETRY_FIRST_S * 2 ** (self._failures - 1), self.RETRY_MAX_S)
            self._retry_at = now + delay
            self._down = _cannot_open(action, exc)
            self._close()
        self._log.log(
            f"{action}:{type(exc).__name__}",
            f"prediction cache {action} failed",
            self._last_error,
            f"serving uncached, retrying in {delay:g} s",
            exc,
        )

    def _close(self) -> None:
        cache, self._cache = self._cache, None
        if cache is not None:
            try:
                cache.close()  # this thread's connection; the others' go with the object
            except Exception:
                pass

    def _database_identity(self) -> tuple[int, int] | None:
        try:
            found = os.stat(self._directory / diskcache.core.DBNAME)
        except OSError:
            return None
        return found.st_dev, found.st_ino

    # --- the cache --------------------------------------------------------

    def get(self, key: str) -> Any | None:
        cache = self._connection()
        if cache is None:
            return None
        try:
            return cache.get(key)
        except Exception as exc:
            self._failed("read", exc, cache)
            return None

    def set(self, key: str, value: Any) -> None:
        cache = self._connection()
        if cache is None:
            return
        try:
            cache.set(key, value)
            if not self._cull_on_write:
                self._writes += 1
                if self._writes % self.OVERSIZE_CHECK_EVERY == 0 and cache.volume() > 2 * self._max_bytes:
                    cache.cull()
        except Exception as exc:
            self._failed("write", exc, cache)

    def clear(self) -> int:
        cache = self._connection()
        if cache is not None:
            try:
                return cache.clear()
            except Exception as exc:
                self._failed("clear", exc, cache)
        retry = max(0.0, self._retry_at - self._clock())
        raise CacheUnavailable(
            f"the prediction cache is unavailable (retried in {retry:.0f} s); predictions are served uncached meanwhile",
            details={"retry_in_s": round(retry, 1)},
        )

    def prune(self) -> int:
        """Evict least recently used entries down to the size bound; how many
        went (0 when the cache cannot be used: the failure is logged)."""
        cache = self._connection()
        if cache is None:
            return 0
        try:
            return cache.expire() + cache.cull()
        except Exception as exc:
            self._failed("prune", exc, cache)
            return 0

    def volume(self) -> int:
        """Bytes the folder's database and files take (0 when it cannot be read)."""
        cache = self._connection()
        if cache is None:
            return 0
        try:
            return cache.volume()
        except Exception as exc:
            self._failed("read", exc, cache)
            return 0

    def health(self) -> dict[str, Any]:
        """ok, degraded (errors: calls skip the cache until the retry) or down
        (the folder cannot be opened at all), for this process. Opens the cache
        when a retry is due, so a poll of ``/readyz`` alone heals it."""
        try:
            cache = self._connection()
        except Exception:  # /readyz must answer whatever the folder does
            cache = None
        with self._lock:
            retry = max(0.0, self._retry_at - self._clock()) if cache is None else 0.0
            return {
                "status": "ok" if cache is not None else ("down" if self._down else "degraded"),
                "backend": "disk",
                "directory": str(self._directory),
                "pid": self._pid,
                "errors": self._errors,
                "last_error": self._last_error,
                "retry_in_s": round(retry, 1),
            }


def build_cache(backend: str, directory: Path, max_bytes: int, max_items: int, cull_on_write: bool = True) -> PredictionCache:
    if backend == "disk":
        return DiskCache(directory, max_bytes, cull_on_write)
    if backend == "memory":
        return MemoryCache(max_items)
    return NullCache()
