"""The disk prediction cache heals itself: read-only and removed folders,
backoff, rate-limited warnings and ``health()``.

Time is a fake clock, so backoffs pass without waiting. File modes do not bind
root, so the read-only scenarios run in a forked child that is ``nobody``
(uid 65534) when the tests run as root, on a folder it owns; it returns what
it saw and the assertions run here.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import traceback
from pathlib import Path

import diskcache
import pytest

from serving.cache import DiskCache, MemoryCache, NullCache, ThrottledLog
from serving.errors import CacheUnavailable

NOBODY = 65534
BOUND = 10_000_000


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def in_child(scenario, *args, unprivileged: bool = True):
    """``scenario(*args)`` in a forked child; what it returns (JSON).

    ``unprivileged``: as root, the child becomes ``nobody`` first, so file
    modes bind it (everything it needs is imported already: after ``setuid``
    it may not read the interpreter's own folders)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, never return into pytest
        os.close(read)
        try:
            if unprivileged and os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            answer = {"value": scenario(*args)}
        except BaseException:
            answer = {"error": traceback.format_exc()}
        try:
            with os.fdopen(write, "w") as out:
                json.dump(answer, out)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as source:
        text = source.read()
    os.waitpid(pid, 0)
    answer = json.loads(text)
    if "error" in answer:
        pytest.fail("in the child process:\n" + answer["error"])
    return answer["value"]


@pytest.fixture
def owned(tmp_path):
    """A folder the unprivileged child owns (as root: outside pytest's 0700 base)."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="serve-http-cache-"))
    os.chmod(folder, 0o755)
    os.chown(folder, NOBODY, NOBODY)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def set_writable(folder: Path, writable: bool) -> None:
    """The folder and its files read-only (as on a read-only mount) or writable again."""
    for path in folder.iterdir():
        path.chmod(0o644 if writable else 0o444)
    folder.chmod(0o755 if writable else 0o555)


class Lines(logging.Handler):
    """The cache's log records, as (level name, message, has a traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[str, str, bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelname, record.getMessage(), record.exc_info is not None))

    def __enter__(self) -> "Lines":
        logger = logging.getLogger("serving.cache")
        self._level = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logger = logging.getLogger("serving.cache")
        logger.removeHandler(self)
        logger.setLevel(self._level)

    def warnings(self) -> list[str]:
        return [message for level, message, _ in self.records if level == "WARNING"]


# --- read-only ------------------------------------------------------------------------


def read_only_mount_then_writable(root: str) -> dict:
    folder = Path(root) / "cache"
    with diskcache.Cache(str(folder), disk=diskcache.JSONDisk) as filled:
        filled.set("k", {"v": 1})
    set_writable(folder, False)
    clock = Clock()
    cache = DiskCache(folder, BOUND, clock=clock)
    seen: dict = {"probe_write": None}
    try:  # the folder really is read-only for this process
        (folder / "probe").write_text("x")
        seen["probe_write"] = "written"
    except PermissionError:
        seen["probe_write"] = "refused"
    with Lines() as lines:
        seen["get"] = cache.get("k")
        cache.set("k2", {"v": 2})
        seen["failed"] = cache.health()
        try:
            cache.clear()
            seen["clear"] = "cleared"
        except CacheUnavailable as unavailable:
            seen["clear"] = {"code": unavailable.code, "message": unavailable.message, "details": unavailable.details}
        for _ in range(200):  # requests within the first second: none touches the folder
            cache.get("k")
            cache.set("k", {"v": 1})
        seen["skipping"] = cache.health()
        clock.advance(DiskCache.RETRY_FIRST_S)
        seen["retry_get"] = cache.get("k")  # the retry is due: still read-only
        seen["retried"] = cache.health()
        set_writable(folder, True)
        clock.advance(seen["retried"]["retry_in_s"] - 0.5)
        seen["before_due"] = cache.get("k")
        clock.advance(0.5)
        seen["healed_get"] = cache.get("k")
        cache.set("k2", {"v": 2})
        seen["healed_k2"] = cache.get("k2")
        seen["healed"] = cache.health()
    seen["log"] = lines.records
    return seen


def test_a_read_only_folder_serves_uncached_then_heals_when_writable(owned):
    seen = in_child(read_only_mount_then_writable, str(owned))
    assert seen["probe_write"] == "refused"
    # Read-only: every call answers (a miss, a dropped write), nothing raises but clear.
    assert seen["get"] is None
    failed = seen["failed"]
    assert failed["status"] == "degraded" and failed["backend"] == "disk"
    assert failed["directory"] == str(owned / "cache")
    assert failed["errors"] == 1  # the open failed once; the write after it skipped the folder
    assert failed["last_error"] == "OperationalError: attempt to write a readonly database"
    assert failed["retry_in_s"] == DiskCache.RETRY_FIRST_S
    assert seen["clear"]["code"] == "cache_unavailable"
    assert "served uncached" in seen["clear"]["message"]
    assert seen["clear"]["details"][0]["retry_in_s"] == DiskCache.RETRY_FIRST_S
    assert seen["skipping"]["errors"] == 1  # 400 calls in the backoff: not one more attempt
    # The retry fails too: the wait doubles.
    assert seen["retry_get"] is None
    assert seen["retried"]["errors"] == 2 and seen["retried"]["retry_in_s"] == 2 * DiskCache.RETRY_FIRST_S
    # Writable again: nothing happens before the retry is due, then it reopens
    # and answers from the entries the folder already held.
    assert seen["before_due"] is None
    assert seen["healed_get"] == {"v": 1}
    assert seen["healed_k2"] == {"v": 2}
    assert seen["healed"]["status"] == "ok" and seen["healed"]["retry_in_s"] == 0
    assert seen["healed"]["errors"] == 2 and seen["healed"]["last_error"] == failed["last_error"]
    # One warning for two failed opens and 400 calls; no traceback but at debug
    # level; one line on reopening.
    warnings = [message for level, message, _ in seen["log"] if level == "WARNING"]
    assert warnings == [
        "prediction cache open failed: OperationalError: attempt to write a readonly database; "
        f"serving uncached, retrying in {DiskCache.RETRY_FIRST_S:g} s",
    ]
    assert not any(has_trace for level, _, has_trace in seen["log"] if level != "DEBUG")
    assert [level for level, _, has_trace in seen["log"] if has_trace] == ["DEBUG"]
    infos = [message for level, message, _ in seen["log"] if level == "INFO"]
    assert len(infos) == 1 and infos[0].startswith("prediction cache reopened: ")


def read_only_under_an_open_cache(root: str) -> dict:
    folder = Path(root) / "cache"
    clock = Clock()
    cache = DiskCache(folder, BOUND, clock=clock)
    cache.set("k", {"v": 1})
    set_writable(folder, False)
    seen: dict = {"own_connection": cache.get("k")}

    def new_request_thread() -> None:  # a thread's first call opens its own connection
        cache.set("k2", {"v": 2})

    thread = threading.Thread(target=new_request_thread)
    thread.start()
    thread.join()
    seen["after_thread"] = cache.health()
    seen["get"] = cache.get("k")  # this thread's connection still reads, but the cache is closed
    set_writable(folder, True)
    clock.advance(DiskCache.RETRY_FIRST_S)
    seen["healed_get"] = cache.get("k")
    seen["healed"] = cache.health()
    return seen


def test_a_write_failing_in_one_thread_takes_the_process_off_the_cache_until_the_retry(owned):
    seen = in_child(read_only_under_an_open_cache, str(owned))
    assert seen["own_connection"] == {"v": 1}  # an open connection keeps its file open
    assert seen["after_thread"]["status"] == "degraded"
    assert seen["after_thread"]["last_error"] == "OperationalError: attempt to write a readonly database"
    assert seen["get"] is None
    assert seen["healed_get"] == {"v": 1} and seen["healed"]["status"] == "ok"


# --- removed folder -------------------------------------------------------------------


def test_a_removed_folder_is_recreated_without_a_restart(tmp_path):
    folder = tmp_path / "cache"
    clock = Clock()
    cache = DiskCache(folder, BOUND, clock=clock)
    cache.set("k", {"v": 1})
    assert cache.get("k") == {"v": 1}
    with Lines() as lines:
        shutil.rmtree(folder)
        clock.advance(DiskCache.FOLDER_CHECK_S)
        assert cache.get("k") is None  # noticed, reopened: a new, empty folder
        assert folder.is_dir()
        cache.set("k", {"v": 2})
        assert cache.get("k") == {"v": 2}
        assert DiskCache(folder, BOUND).get("k") == {"v": 2}  # another worker reads the same folder
    health = cache.health()
    assert health["status"] == "ok" and health["errors"] == 0
    assert lines.warnings() == [f"prediction cache folder was removed or replaced: {folder}; reopening it"]


def test_a_removed_folder_that_a_new_connection_cannot_open_is_down_until_recreated(tmp_path):
    folder = tmp_path / "cache"
    clock = Clock()
    cache = DiskCache(folder, BOUND, clock=clock)
    cache.set("k", {"v": 1})
    shutil.rmtree(folder)
    seen: dict = {}

    def new_request_thread() -> None:  # before the folder check is due
        seen["thread_get"] = cache.get("k")

    thread = threading.Thread(target=new_request_thread)
    thread.start()
    thread.join()
    seen["after_thread"] = cache.health()
    clock.advance(DiskCache.RETRY_FIRST_S)
    cache.set("k", {"v": 2})
    seen["healed_get"] = cache.get("k")
    seen["healed"] = cache.health()
    seen["recreated"] = folder.is_dir()
    assert seen["thread_get"] is None
    assert seen["after_thread"]["status"] == "down"
    assert seen["after_thread"]["last_error"] == "OperationalError: unable to open database file"
    assert seen["recreated"] and seen["healed_get"] == {"v": 2} and seen["healed"]["status"] == "ok"


# --- backoff --------------------------------------------------------------------------


def test_retries_back_off_doubling_to_the_bound_and_a_healthy_spell_resets_them(tmp_path):
    parent = tmp_path / "parent"
    parent.write_text("")  # a file where the cache's parent folder should be: no open can succeed
    clock = Clock()
    cache = DiskCache(parent / "cache", BOUND, clock=clock)
    waits = []
    for _ in range(8):
        assert cache.get("k") is None
        health = cache.health()
        assert health["status"] == "down" and health["last_error"].startswith("NotADirectoryError: ")
        waits.append(health["retry_in_s"])
        clock.advance(health["retry_in_s"])
    expected = [min(DiskCache.RETRY_FIRST_S * 2**i, DiskCache.RETRY_MAX_S) for i in range(8)]
    assert waits == expected and waits[-1] == DiskCache.RETRY_MAX_S
    # A poll of health() makes the retry that is due, as a request would.
    assert cache.health()["errors"] == len(waits) + 1

    parent.unlink()
    clock.advance(DiskCache.RETRY_MAX_S)
    cache.set("k", {"v": 1})  # the retry is due: it opens (creating the folder)
    assert cache.get("k") == {"v": 1} and cache.health()["status"] == "ok"
    # Failing again soon after reopening: the wait goes on from where it was.
    shutil.rmtree(parent)
    parent.write_text("")
    clock.advance(DiskCache.FOLDER_CHECK_S)
    assert cache.get("k") is None
    assert cache.health()["retry_in_s"] == DiskCache.RETRY_MAX_S
    # Open for a healthy spell, then failing: the wait starts from the first again.
    parent.unlink()
    clock.advance(DiskCache.RETRY_MAX_S)
    assert cache.get("k") is None and cache.health()["status"] == "ok"  # a new folder
    clock.advance(DiskCache.HEALTHY_AFTER_S)
    assert cache.get("k") is None
    shutil.rmtree(parent)
    parent.write_text("")
    clock.advance(DiskCache.FOLDER_CHECK_S)
    cache.get("k")
    assert cache.health()["retry_in_s"] == DiskCache.RETRY_FIRST_S


# --- warnings -------------------------------------------------------------------------


def test_warnings_are_one_line_per_kind_per_interval_with_a_count(tmp_path):
    parent = tmp_path / "parent"
    parent.write_text("")
    clock = Clock()
    cache = DiskCache(parent / "cache", BOUND, clock=clock)
    calls = 0
    errors_when_logged = []
    with Lines() as lines:
        for _ in range(1200):  # 150 s of traffic, 16 calls a second
            cache.get("k")
            cache.set("k", {"v": 1})
            calls += 2
            if len(lines.warnings()) > len(errors_when_logged):
                errors_when_logged.append(cache.health()["errors"])
            clock.advance(0.125)
    errors = cache.health()["errors"]
    warnings = lines.warnings()
    # The backoff keeps the folder from being tried more than a few times...
    assert errors < calls / 100
    # ... and the log has one line a minute at most, each later one counting
    # the failures since the one before.
    assert len(warnings) == len(errors_when_logged)
    assert 2 <= len(warnings) <= 1 + 150 // DiskCache.WARN_EVERY_S
    problem = re.escape(cache.health()["last_error"])
    first, most = f"{DiskCache.RETRY_FIRST_S:g}", f"{DiskCache.RETRY_MAX_S:g}"
    assert re.fullmatch(rf"prediction cache open failed: {problem}; serving uncached, retrying in {first} s", warnings[0])
    for before, after, line in zip(errors_when_logged, errors_when_logged[1:], warnings[1:]):
        found = re.fullmatch(
            rf"prediction cache open failed (\d+) times in the last (\d+) s: {problem}; serving uncached, retrying in {most} s",
            line,
        )
        assert found, line
        assert int(found[1]) == after - before
        assert DiskCache.WARN_EVERY_S <= int(found[2]) < DiskCache.WARN_EVERY_S + DiskCache.RETRY_MAX_S
    assert not any(has_trace for level, _, has_trace in lines.records if level != "DEBUG")
    assert sum(has_trace for _, _, has_trace in lines.records) == 1  # the first occurrence, at debug


def test_throttled_log_keeps_kinds_apart(caplog):
    clock = Clock()
    throttled = ThrottledLog(60, clock)
    caplog.set_level(logging.WARNING, logger="serving.cache")
    assert throttled.log("write:OperationalError", "prediction cache write failed", "OperationalError: x")
    assert throttled.log("read:OperationalError", "prediction cache read failed", "OperationalError: x")
    assert not throttled.log("write:OperationalError", "prediction cache write failed", "OperationalError: x")
    clock.advance(60)
    assert throttled.log("write:OperationalError", "prediction cache write failed", "OperationalError: x")
    assert [r.getMessage() for r in caplog.records] == [
        "prediction cache write failed: OperationalError: x",
        "prediction cache read failed: OperationalError: x",
        "prediction cache write failed 2 times in the last 60 s: OperationalError: x",
    ]


# --- prune, clear, other processes, other caches ---------------------------------------


def test_prune_of_a_broken_cache_returns_0_and_logs_one_line_a_minute(tmp_path):
    parent = tmp_path / "parent"
    parent.write_text("")
    clock = Clock()
    cache = DiskCache(parent / "cache", BOUND, cull_on_write=False, clock=clock)
    with Lines() as lines:
        pruned = []
        for _ in range(12):  # the job worker's schedule, here every 5 s for a minute
            pruned.append(cache.prune())
            clock.advance(5)
    assert pruned == [0] * 12
    assert len(lines.warnings()) == 1 and lines.warnings()[0].startswith("prediction cache open failed: ")
    parent.unlink()
    clock.advance(DiskCache.RETRY_MAX_S)
    cache.set("k", {"v": 1})
    assert cache.prune() == 0 and cache.get("k") == {"v": 1}  # healthy again: prunes (nothing past the bound)


def test_clear_answers_cache_unavailable_while_broken_and_counts_once_healthy(tmp_path):
    parent = tmp_path / "parent"
    parent.write_text("")
    clock = Clock()
    cache = DiskCache(parent / "cache", BOUND, clock=clock)
    with pytest.raises(CacheUnavailable) as raised:
        cache.clear()
    assert raised.value.code == "cache_unavailable"
    assert str(parent) not in raised.value.message  # no path in a client's answer
    parent.unlink()
    clock.advance(DiskCache.RETRY_FIRST_S)
    cache.set("a", 1)
    cache.set("b", 2)
    assert cache.clear() == 2


def test_a_forked_process_starts_fresh_not_in_its_parents_backoff(tmp_path):
    parent = tmp_path / "parent"
    parent.write_text("")
    clock = Clock()
    cache = DiskCache(parent / "cache", BOUND, clock=clock)
    cache.get("k")
    assert cache.health()["status"] == "down"
    parent.unlink()

    def child() -> dict:
        cache.set("k", {"v": 1})
        return {"get": cache.get("k"), "health": cache.health()}

    seen = in_child(child, unprivileged=False)
    assert seen["get"] == {"v": 1} and seen["health"]["status"] == "ok" and seen["health"]["errors"] == 0
    assert seen["health"]["pid"] != os.getpid()
    assert cache.get("k") is None and cache.health()["status"] == "down"  # the parent waits for its retry


def test_health_of_every_cache_class_is_cheap_and_says_ok(tmp_path):
    assert NullCache().health() == {"status": "ok", "backend": "none"}
    assert MemoryCache(2).health() == {"status": "ok", "backend": "memory"}
    disk = DiskCache(tmp_path / "cache", BOUND)
    health = disk.health()  # opens the folder: /readyz before any prediction tells the truth
    assert health["status"] == "ok" and health["errors"] == 0 and health["last_error"] is None
    assert stat.S_ISDIR(os.stat(tmp_path / "cache").st_mode)
