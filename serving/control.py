"""Live model changes under Gunicorn: the master loads, fresh workers serve.

A model must be loaded in the master, so that the workers share its weights
copy-on-write, as they do the models loaded at start-up. So a worker asked to
load (or unload) a model does not load it itself: it leaves a request in the
control folder and sends the master ``SIGHUP``. Gunicorn's reload then runs
``on_reload`` in the master (``gunicorn.conf.py``), which applies the pending
requests to the master's registry (or, on a plain ``SIGHUP`` from an operator,
re-reads the whole repository) and writes each request's result; then it forks
new workers from the updated master and stops the old ones gracefully, each
finishing the requests it holds.

The asking worker, one of the old ones, answers only when the change is done:
the master's result is written, every other old worker has exited, and its
own other connections are closed, so every request that starts after the
answer is served by a new worker. A failed load leaves the old model serving
(the workers are still replaced: harmless) and the answer carries the reason.
Requests are one at a time (a lock in the folder). Outside Gunicorn (the Flask
test client, a script) the change is applied in the process itself.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from serving.errors import Conflict, LoadFailed, ModelLoadError, NotReady, ServeError

log = logging.getLogger(__name__)

LOAD, UNLOAD = "load", "unload"

#: Set in each Gunicorn worker by ``post_fork``: the master's pid and the worker object.
MASTER_PID: int | None = None
WORKER: Any = None


@dataclass(frozen=True)
class Change:
    """One asked change and its outcome: ``code`` is the error's (a
    ``ServeError`` code) when it failed."""

    action: str
    name: str
    message: str = ""
    code: str | None = None

    @property
    def ok(self) -> bool:
        return self.code is None


def apply_change(registry: Any, action: str, name: str) -> Change:
    """Load (anew) or unload a model of this process's registry."""
    try:
        if action == LOAD:
            loaded = registry.reload(name)
            return Change(action, name, f"loaded {', '.join(loaded)}")
        if action == UNLOAD:
            registry.unload(name)
            return Change(action, name, f"unloaded {name}")
        return Change(action, name, f"unknown action {action!r}", code="invalid_input")
    except ModelLoadError as exc:
        return Change(action, name, " ".join(exc.reason.split()), code=LoadFailed.code)
    except ServeError as exc:
        return Change(action, name, exc.message, code=exc.code)


_prepared: tuple[int, Path] | None = None


def prepare(folder: Path) -> Path:
    """An empty control folder, once per master process: Gunicorn reads its
    config file (which calls this) again on every SIGHUP, and the requests
    waiting in the folder must survive that."""
    global _prepared
    folder = Path(folder).resolve()
    if _prepared is not None and _prepared[0] == os.getpid():
        return _prepared[1]
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    _prepared = (os.getpid(), folder)
    return folder


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


@contextmanager
def _one_at_a_time(folder: Path, timeout: float) -> Iterator[None]:
    with open(folder / "lock", "a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Conflict("another model change is under way; try again when it is done") from None
                time.sleep(0.05)  # polling a lock another worker holds, bounded by the deadline
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ask(folder: Path, action: str, name: str, timeout: float, apply_here: Callable[[str, str], Change]) -> Change:
    """Have the change made: by the master when under Gunicorn, else here.
    Returns once every request that starts afterwards sees it."""
    if MASTER_PID is None:
        return apply_here(action, name)
    with _one_at_a_time(folder, timeout):
        ident = secrets.token_hex(8)
        _write(folder / f"request-{ident}.json", {"action": action, "name": name})
        os.kill(MASTER_PID, signal.SIGHUP)
        answer = _wait_for(folder / f"result-{ident}.json", timeout)
        (folder / f"result-{ident}.json").unlink(missing_ok=True)
    change = Change(**answer["change"])
    _wait_until_replaced(answer["old_workers"], timeout)
    return change


def _wait_for(path: Path, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise NotReady("the server did not apply the model change in time; see its log")
        time.sleep(0.02)  # the master writes the file; polling it, bounded by the deadline
    return json.loads(path.read_text())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_until_replaced(old_workers: list[int], timeout: float) -> None:
    """Until the other old workers have exited and this one holds no other
    connection: then only new workers take requests."""
    deadline = time.monotonic() + timeout
    me = os.getpid()
    while time.monotonic() < deadline:
        others = [pid for pid in old_workers if pid != me and _alive(pid)]
        connections = getattr(WORKER, "nr_conns", 1) if me in old_workers else 1
        if not others and connections <= 1:
            return
        time.sleep(0.02)  # other processes' exits: polled, bounded by the deadline
    log.warning("model change: old workers still running after %.0f s", timeout)


def apply_pending(folder: Path, old_workers: list[int], apply: Callable[[str, str], Change], refresh: Callable[[], Any]) -> int:
    """In the master, on SIGHUP: apply each pending request and write its
    result; with none pending, ``refresh`` (re-read the repository). Returns
    how many requests were applied."""
    pending = sorted(folder.glob("request-*.json")) if folder.is_dir() else []
    if not pending:
        refresh()
        return 0
    for path in pending:
        ident = path.stem.removeprefix("request-")
        try:
            request = json.loads(path.read_text())
            change = apply(request["action"], request["name"])
        except Exception as exc:  # a broken request file must not take the master down
            log.exception("model change %s failed", ident)
            change = Change("?", "?", f"the master failed: {type(exc).__name__}", code="internal_error")
        _write(folder / f"result-{ident}.json", {"change": change.__dict__, "old_workers": old_workers})
        path.unlink(missing_ok=True)
    return len(pending)
