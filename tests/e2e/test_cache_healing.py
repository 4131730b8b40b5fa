"""The disk prediction cache heals itself under a real Gunicorn: no restart, no SIGHUP.

A read-only folder is put where the cache folder was (as when a read-only
volume is mounted there; a mount cannot be made read-only under files open
for writing), then made writable again; then the folder is removed.

File modes do not bind root, so when the tests run as root Gunicorn runs as
root without the capabilities that override them (CAP_DAC_OVERRIDE,
CAP_DAC_READ_SEARCH, CAP_FOWNER, dropped from its bounding set before exec):
the files it makes are still root's, the interpreter and the repository stay
readable, and a folder made 0555 is read-only for it. Gunicorn's own
``--user nobody`` would also do, but a worker that can no longer read the
interpreter's folders (a pyenv under /root here) fails on its first lazy
import; a read-only mount needs CAP_SYS_ADMIN, which CI containers lack.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import diskcache
import pytest
import requests

from serving.cache import DiskCache
from serving.settings import REPO_ROOT
from tests.e2e import server as server_module
from tests.e2e.server import GunicornServer

pytestmark = pytest.mark.e2e

TEXTS = [
    "a moving, beautifully acted film",
    "dull, predictable and far too long",
    "two brothers cross the country to find their father",
    "the best thriller of the year",
    "a lazy script and wooden acting",
    "set in 1920s paris, the story follows a young painter",
]

# Runs Gunicorn without the capabilities that let root ignore file modes.
WITHOUT_FILE_POWERS = '''#!{python}
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for capability in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
    if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
os.execv({gunicorn!r}, [{gunicorn!r}, *sys.argv[1:]])
'''


def show(capsys, test: str, **figures) -> None:
    with capsys.disabled():
        print(f"\n[{test}] " + ", ".join(f"{k}={v}" for k, v in figures.items()))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cache-healing")
    (tmp / "models").mkdir()
    shutil.copytree(REPO_ROOT / "models" / "sentiment", tmp / "models" / "sentiment",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {"SERVE_MODEL_REPOSITORY": str(tmp / "models"), "WORKERS": "2", "THREADS": "4", "SERVE_CACHE_BACKEND": "disk"}
    server = GunicornServer(tmp, env=env)
    server.cache_dir = tmp / "cache"
    with pytest.MonkeyPatch.context() as patch:
        if os.geteuid() == 0:
            wrapper = tmp / "gunicorn-without-file-powers"
            wrapper.write_text(WITHOUT_FILE_POWERS.format(python=sys.executable, gunicorn=str(server_module.GUNICORN)))
            wrapper.chmod(0o755)
            patch.setattr(server_module, "GUNICORN", wrapper)
        server.start()
    try:
        # /readyz answers once one worker is up: the tests follow each worker.
        server.wait_for(lambda: len(server.worker_pids()) == 2, 30, "both workers forked")
        if os.geteuid() == 0:
            capabilities = Path(f"/proc/{server.pid}/status").read_text().split("CapEff:")[1].split()[0]
            assert not int(capabilities, 16) & 0b1110, "Gunicorn still overrides file modes"
        yield server
    finally:
        server.stop()


def classify(server, text: str) -> requests.Response:
    # A new connection each time, so both workers answer in turn.
    response = requests.post(server.url + "/v1/classify", json={"text": text}, timeout=30)
    assert response.status_code == 200, response.text
    return response


def answers(server) -> dict[str, dict]:
    return {text: classify(server, text).json() for text in TEXTS}


def each_worker(server, status: str, timeout: float) -> dict[int, dict]:
    """Poll ``/readyz`` until every worker has said its cache is ``status``;
    each worker's last report. Each poll also makes a retry that is due."""
    workers, seen = server.worker_pids(), {}

    def all_said() -> bool:
        cache = requests.get(server.url + "/readyz", timeout=10).json()["cache"]
        if cache["status"] == status:
            seen[cache["pid"]] = cache
        else:
            seen.pop(cache["pid"], None)
        return workers <= set(seen)

    server.wait_for(all_said, timeout, f"every worker's cache {status}")
    return seen


def cache_lines(server) -> list[dict]:
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    return [line for line in lines if "prediction cache" in line.get("message", "")]


def set_writable(folder: Path, writable: bool) -> None:
    for path in folder.iterdir():
        path.chmod(0o644 if writable else 0o444)
    folder.chmod(0o755 if writable else 0o555)


def test_a_read_only_cache_folder_serves_uncached_and_heals_when_writable(server, capsys):
    workers = server.worker_pids()
    expected = answers(server)
    assert all(classify(server, text).headers["X-Cache"] == "HIT" for text in TEXTS)
    lines_before = len(cache_lines(server))

    # A read-only folder where the cache was, holding a cache none of these texts is in.
    read_only = server.cache_dir.with_name("cache-read-only")
    with diskcache.Cache(str(read_only), disk=diskcache.JSONDisk):
        pass
    set_writable(read_only, False)
    server.cache_dir.rename(server.cache_dir.with_name("cache-before"))
    read_only.rename(server.cache_dir)
    swapped = time.monotonic()
    each_worker(server, "degraded", 15)
    noticed_s = time.monotonic() - swapped

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda i: classify(server, TEXTS[i % len(TEXTS)]), range(300)))
    assert [r.json() for r in responses] == [expected[TEXTS[i % len(TEXTS)]] for i in range(300)]
    assert {r.headers["X-Cache"] for r in responses} == {"MISS"}
    for route in ("/v1/cache", "/cache"):
        cleared = requests.delete(server.url + route, timeout=10)
        assert cleared.status_code == 503 and cleared.headers["Retry-After"]
        error = cleared.json()["error"]
        assert error["code"] == "cache_unavailable" and "served uncached" in error["message"]
        assert str(server.cache_dir) not in cleared.text
    ready = requests.get(server.url + "/readyz", timeout=10)
    assert ready.status_code == 200  # the models answer: the cache never makes it 503
    cache = ready.json()["cache"]
    assert cache["status"] == "degraded" and cache["directory"] == str(server.cache_dir)
    assert cache["last_error"] == "OperationalError: attempt to write a readonly database"
    # Seconds to its next attempt (0.0 when that is due within 50 ms).
    assert 0 <= cache["retry_in_s"] <= DiskCache.RETRY_MAX_S and cache["errors"] >= 1

    log = server.log()
    warnings = [line for line in cache_lines(server)[lines_before:] if line["level"] == "WARNING"]
    # At most one line per kind (folder replaced, open failed) per worker, for 300 requests.
    assert 1 <= len(warnings) <= 2 * len(workers), warnings
    assert "Traceback" not in log and not any("exc_info" in line for line in cache_lines(server))

    # Writable again: each worker reopens it at its next retry, no restart, no SIGHUP.
    set_writable(server.cache_dir, True)
    writable = time.monotonic()
    each_worker(server, "ok", 2 * DiskCache.RETRY_MAX_S + 10)
    healed_s = time.monotonic() - writable
    assert classify(server, TEXTS[0]).headers["X-Cache"] == "MISS"
    again = classify(server, TEXTS[0])
    assert again.headers["X-Cache"] == "HIT" and again.json() == expected[TEXTS[0]]
    assert server.worker_pids() == workers and server.process.poll() is None
    reopened = [line for line in cache_lines(server)[lines_before:] if line["message"].startswith("prediction cache reopened")]
    assert len(reopened) == len(workers)
    show(capsys, "read-only cache", requests=300, noticed_s=f"{noticed_s:.1f}", healed_after_writable_s=f"{healed_s:.1f}",
         warning_lines=len(warnings), retry_in_s_when_writable=cache["retry_in_s"], errors_one_worker=cache["errors"])


def test_a_removed_cache_folder_is_recreated_without_a_restart(server, capsys):
    workers = server.worker_pids()
    shutil.rmtree(server.cache_dir)
    removed = time.monotonic()
    # A poll of /readyz is enough: the worker that answers notices and recreates it.
    server.wait_for(lambda: requests.get(server.url + "/readyz", timeout=10).ok and
                    (server.cache_dir / diskcache.core.DBNAME).exists(), 15, "the cache folder recreated")
    recreated_s = time.monotonic() - removed
    fresh = iter(range(1000))

    def shared_hits() -> bool:
        # A new text: computed once, then a hit whichever worker answers. Until
        # both have reopened the new folder, one of them misses.
        text = f"an unseen film, number {next(fresh)}"
        if classify(server, text).headers["X-Cache"] != "MISS":
            return False
        return all(classify(server, text).headers["X-Cache"] == "HIT" for _ in range(8))

    server.wait_for(shared_hits, 15, "both workers sharing the recreated folder")
    with diskcache.Cache(str(server.cache_dir), disk=diskcache.JSONDisk) as recreated:
        assert len(recreated) >= 1
    each_worker(server, "ok", 15)
    assert server.worker_pids() == workers and "Traceback" not in server.log()
    show(capsys, "removed cache", recreated_s=f"{recreated_s:.2f}", tries=next(fresh))
